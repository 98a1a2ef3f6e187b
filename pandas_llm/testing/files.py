"""Files on the loopback server: ``/v1/files`` (upload, list, retrieve, content, delete).

The store behind the Batch API emulation (batches.py): uploads are parsed from the same
``multipart/form-data`` body the openai SDK sends; output and error files of batches
are added here too, so ``files.content`` serves them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._http import Request, Response, error_response, json_response

__all__ = ["FileStore"]

PURPOSES = ("batch", "batch_output", "fine-tune", "assistants", "vision", "user_data", "evals")


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def obj(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
            "filename": self.filename, "purpose": self.purpose, "status": "processed",
            "expires_at": None, "status_details": None,
        }  # fmt: skip


class FileStore:
    """Files by id; ``routes()`` gives the ``/v1/files`` handlers. ``check_auth(request)``
    returns a 401 response or None (the server's)."""

    def __init__(self, check_auth: Callable[[Request], Response | None], lock: threading.RLock,
                 ids: itertools.count) -> None:  # fmt: skip
        self.check_auth = check_auth
        self._lock = lock
        self._ids = ids
        self.files: dict[str, _File] = {}
        self.uploaded = self.deleted = 0
        self.deleted_ids: list[str] = []
        self.uploads: list[_File] = []  # every file uploaded, kept after a delete (for tests)

    def routes(self) -> dict[tuple[str, str], Callable[[Request], Response]]:
        return {
            ("POST", "/v1/files"): self._upload,
            ("GET", "/v1/files"): self._list_files,
            ("GET", "/v1/files/*"): self._get_file,
            ("DELETE", "/v1/files/*"): self._delete_file,
        }

    def get(self, file_id: str | None) -> _File | None:
        with self._lock:
            return self.files.get(file_id) if file_id else None

    def add(self, filename: str, purpose: str, data: bytes) -> _File:
        with self._lock:
            f = _File(f"file-{next(self._ids):08d}", filename, purpose, data, int(time.time()))
            self.files[f.id] = f
            return f

    def _upload(self, request: Request) -> Response:
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        try:
            fields = _multipart(request)
        except ValueError as exc:
            return error_response(400, f"Could not parse the multipart upload: {exc}")
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields:
            return error_response(400, "Missing file.", param="file")
        if purpose not in PURPOSES or purpose == "batch_output":
            return error_response(400, f"Invalid purpose {purpose!r}.", param="purpose")
        filename, data = fields["file"]
        with self._lock:
            f = self.add(filename or "upload", purpose, data)
            self.uploaded += 1
            self.uploads.append(f)
        return json_response(200, f.obj())

    def _list_files(self, request: Request) -> Response:
        with self._lock:
            data = [f.obj() for f in self.files.values()]
        return json_response(200, {"object": "list", "data": data, "has_more": False})

    def _get_file(self, request: Request) -> Response:
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        rest = request.path[len("/v1/files/") :]
        file_id, _, what = rest.partition("/")
        with self._lock:
            f = self.files.get(file_id)
        if f is None or what not in ("", "content"):
            return error_response(404, f"No such File object: {file_id}", code="not_found")
        if what == "content":
            return Response(200, f.data, content_type="application/octet-stream")
        return json_response(200, f.obj())

    def _delete_file(self, request: Request) -> Response:
        file_id = request.path[len("/v1/files/") :]
        with self._lock:
            f = self.files.pop(file_id, None)
            if f is not None:
                self.deleted += 1
                self.deleted_ids.append(file_id)
        if f is None:
            return error_response(404, f"No such File object: {file_id}", code="not_found")
        return json_response(200, {"id": file_id, "object": "file", "deleted": True})


def _multipart(request: Request) -> dict[str, tuple[str | None, bytes]]:
    """``{field name: (filename, data)}`` from a ``multipart/form-data`` body."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ValueError(f"content-type is {ctype!r}, expected multipart/form-data")
    params = dict(p.strip().partition("=")[::2] for p in ctype.split(";")[1:])
    boundary = params.get("boundary", "").strip('"')
    if not boundary:
        raise ValueError("no boundary")
    delim = b"--" + boundary.encode()
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in request.body.split(delim)[1:]:
        if part.startswith(b"--"):
            break
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part has no header block")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        name = filename = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                for item in line.split(";")[1:]:
                    key, _, value = item.strip().partition("=")
                    if key == "name":
                        name = value.strip('"')
                    elif key == "filename":
                        filename = value.strip('"')
        if name is not None:
            fields[name] = (filename, data)
    return fields
