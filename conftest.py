"""What every test and every doctest shares: a private working directory, a private user cache
folder (``XDG_CACHE_HOME``) and no OpenAI environment.

pytest collects the package too (``--doctest-modules``, see pyproject.toml), so the ``>>>``
examples run like the tests: each in its own temporary directory, so the default sidecar
(.pandas_llm/cache.sqlite) never leaks between them or into the checkout, and with
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` unset, so nothing reaches a real API by accident.
An example may connect to this machine only (the loopback server): any other address is
refused, so an example that would reach the network fails instead.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from _pytest.doctest import DoctestItem

# A deprecated alias that warns when imported (tests/test_exports.py checks it does); it has no examples.
collect_ignore = ["pandas_llm/errors.py"]


@pytest.fixture(autouse=True)
def _private_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))  # learned limits, Dask's local sidecars
    yield tmp_path


def _loopback(host: object) -> bool:
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def _examples_stay_on_this_machine(request, monkeypatch):
    if not isinstance(request.node, DoctestItem):
        return
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def only_loopback_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            raise OSError(f"a docstring example tried to reach {address[0]}: examples use the loopback server")
        return connect(self, address)

    def only_loopback_names(host, *args, **kwargs):
        if host is not None and not _loopback(host):
            raise OSError(f"a docstring example tried to reach {host}: examples use the loopback server")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", only_loopback_connect)
    monkeypatch.setattr(socket, "getaddrinfo", only_loopback_names)
