"""The sidecar file on disk: created complete and private, refused when it is not ours.

A new cache is built aside and linked into place (another process never sees a half-made
file), readable by its owner only; an existing path must be a SQLite file this user can
write (the file, its ``-wal`` and ``-shm``, the folder), else ``ConfigError`` before
anything is sent.
"""

from __future__ import annotations

import os
import sqlite3
import threading

from .._errors import ConfigError

__all__ = ["PRIVATE_DIR_NAME", "check_or_create", "secure_files", "ADVICE"]

_MAGIC = b"SQLite format 3\x00"

PRIVATE_DIR_NAME = ".pandas_llm"


def _create_private(path: str) -> None:
    """Create the file readable by its owner only (answers can be sensitive); a folder we
    create is 0700 whatever the umask, and the default ``.pandas_llm`` folder is kept so."""
    _private_folder(path)
    if not os.path.exists(path):
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)


def _private_folder(path: str) -> None:
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        _chmod(folder, 0o700)  # makedirs' mode goes through the umask
    elif folder and os.path.basename(os.path.normpath(folder)) == PRIVATE_DIR_NAME:
        _chmod(folder, 0o700)


def secure_files(path: str) -> None:
    """Set the sidecar and its ``-wal``/``-shm`` files to 0600 (owner only), on every open:
    a file made by an older version, another tool or a loose umask is tightened too.
    Files another user owns are left as they are (chmod is not ours to do there)."""
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        _chmod(name, 0o600)


def _chmod(name: str, mode: int) -> None:
    try:
        if os.stat(name).st_mode & 0o777 != mode:
            os.chmod(name, mode)
    except (FileNotFoundError, PermissionError):
        pass


def check_or_create(path: str) -> None:
    """Refuse what is not ours at ``path``; create a new cache there, complete from its first byte."""
    folder = os.path.dirname(path) or "."
    try:
        _private_folder(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the cache directory {folder!r} ({exc}). {ADVICE}") from exc
    if not os.path.lexists(path):
        _build_aside(path, folder)
    if not os.path.isfile(path):
        raise ConfigError(f"the cache path {path!r} is not a regular file. {ADVICE}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC))
    except OSError as exc:
        raise ConfigError(f"cannot read the cache file {path!r} ({exc}). {ADVICE}") from exc
    if head != _MAGIC:
        what = "is empty" if not head else "is not a SQLite database"
        raise ConfigError(f"{path!r} {what}, so it is not a pandas-llm cache; it was left untouched. {ADVICE}")
    for p, what in ((folder, "directory"), (path, "file"), (path + "-wal", "file"), (path + "-shm", "file")):
        if os.path.exists(p) and not _writable(p):
            raise ConfigError(f"the cache {what} {p!r} is read-only. Make it writable, or {ADVICE_LOWER}")


def _writable(path: str) -> bool:
    return os.access(path, os.W_OK)


def _build_aside(path: str, folder: str) -> None:
    """Build an empty cache beside ``path``, then link it into place: another process never
    sees a half-made file, so an empty file at a cache path is never one of ours."""
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.new")
    try:
        _create_private(tmp)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        finally:
            conn.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        except OSError:
            if not os.path.lexists(path):  # no hard links on this filesystem
                os.replace(tmp, path)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot create the cache file {path!r} ({exc}). {ADVICE}") from exc
    finally:
        for p in (tmp, tmp + "-wal", tmp + "-shm"):
            try:
                os.remove(p)
            except OSError:
                pass


ADVICE = "Pass cache='other/path.sqlite' or cache=False."
ADVICE_LOWER = "pass cache='other/path.sqlite' or cache=False."
