"""localhub's HTTP server: the subset of the Hub's API that `huggingface_hub` uses, served by a
threaded server (a slow download does not block other clients) with at most `max_connections`
connections at once (more are answered 503 and closed: idle clients cannot pile up threads).

Who may write: with `token`, only requests carrying it. Without one, anonymous writes are
allowed on a loopback address (tests and the demo rely on it); bound to any other address the
server refuses to start unless `allow_anonymous_writes` says so explicitly.

The request handler is localhub.handler (routes in localhub.reads and localhub.writes, bodies in
localhub.bodies and localhub.payload); repos, commits and blobs are localhub.storage.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

from .errors import HttpError
from .handler import TYPES, HubHandler
from .storage import Storage

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_PAGE_SIZE", "HttpError", "HubConfig",
           "HubHandler", "HubServer", "RunningHub", "TYPES", "make_server"]

log = logging.getLogger("localhub")

DEFAULT_PAGE_SIZE = 100
DEFAULT_MAX_BODY = 1 << 30  # 1 GiB, spooled to disk: the Hub's own cap on a regular (non-LFS) commit is far lower
DEFAULT_MAX_CONNECTIONS = 64
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"X-Error-Message: too many connections\r\nContent-Length: 35\r\n\r\n"
         b'{"error": "too many connections"}\r\n')


class InsecureBindError(ValueError):
    """Anonymous writes on a non-loopback address without saying so."""


@dataclass
class HubConfig:
    token: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    max_body: int = DEFAULT_MAX_BODY
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    allow_anonymous_writes: bool = False  # needed (without a token) on any non-loopback address


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, storage: Storage, config: HubConfig):
        super().__init__(address, HubHandler)
        self.storage = storage
        self.config = config
        self._slots = threading.BoundedSemaphore(max(1, config.max_connections))

    def process_request(self, request, client_address):
        """One thread per connection, at most `max_connections` at once; beyond, a 503."""
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        """A client that hangs up mid-response is routine; log it instead of printing a trace."""
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback one (127.0.0.0/8, ::1, localhost)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


@dataclass
class RunningHub:
    """A localhub serving in a background thread; `url` is its `HF_ENDPOINT`."""

    server: HubServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def storage(self) -> Storage:
        return self.server.storage

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> RunningHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_server(root: Path, *, host: str = "127.0.0.1", port: int = 0, state: Path | None = None,
                config: HubConfig | None = None) -> HubServer:
    from .storage import default_state_dir

    config = config or HubConfig()
    if config.token is None and not config.allow_anonymous_writes and not is_loopback(host):
        raise InsecureBindError(
            f"localhub bound to {host} would take anonymous writes from the network: pass --token T "
            "(writes then need `Authorization: Bearer T`), or --allow-anonymous-writes to accept them")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"localhub root {root} is not a folder: create it or pass another")
    storage = Storage(root, Path(state) if state else default_state_dir(root))
    return HubServer((host, port), storage, config)
