"""The request handler of localhub: dispatch and routing, request bodies (spooled to disk,
capped: localhub.bodies), tokens, JSON responses and errors with the Hub's `X-Error-Code` so the
client raises its typed exceptions. The routes themselves are in localhub.reads and
localhub.writes.

HTTP/1.1 keep-alive: every request body is read in full, or the connection is closed.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import logging
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from .bodies import MAX_JSON_BODY, body_chunks, parse_json_object, spool
from .errors import HttpError
from .names import InvalidName, check_revision
from .reads import ReadRoutes
from .storage import Commit, Conflict, NotFound, RepoRef, repo_ref
from .writes import WriteRoutes

if TYPE_CHECKING:
    from .server import HubServer

log = logging.getLogger("localhub")
TYPES = {"models": "model", "datasets": "dataset"}


class HubHandler(ReadRoutes, WriteRoutes, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a client may stay silent (headers, body, idle keep-alive)
    server: HubServer  # localhub.server.HubServer: .storage, .config

    # ------------------------------------------------------------ plumbing

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        try:
            split = urlsplit(self.path)
            self.query = parse_qs(split.query, keep_blank_values=True)
            segments = [unquote(s) for s in split.path.split("/")[1:]]
            if any("\0" in s for s in segments):
                raise HttpError(400, "NUL bytes are refused in paths")
            self._route(method, segments)
        except HttpError as err:
            self._error(err.status, err.message, err.code)
        except InvalidName as err:
            self._error(400, str(err))
        except NotFound as err:
            self._error(404, str(err), err.kind)
        except Conflict as err:
            self._error(err.status, str(err))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:  # a server bug must answer 500, not kill the thread silently
            log.exception("internal error on %s %s", method, self.path)
            self._error(500, f"internal error: {type(err).__name__}")
        finally:
            if not self._body_read and method in ("POST", "PUT", "DELETE"):
                self._drain_or_close()

    def _route(self, method: str, seg: list[str]) -> None:
        if seg[:1] == ["api"]:
            return self._route_api(method, seg[1:])
        if seg[:1] == ["datasets"]:
            repo_type, seg = "dataset", seg[1:]
        else:
            repo_type = "model"
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            ref = repo_ref(repo_type, seg[0], seg[1])
            return self._resolve(method, ref, seg[3], "/".join(seg[4:]))
        raise HttpError(404, f"no route for {method} {self.path}")

    def _route_api(self, method: str, seg: list[str]) -> None:
        if seg == ["whoami-v2"] and method == "GET":
            return self._whoami()
        if seg == ["validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if seg[:1] == ["repos"] and len(seg) == 2:
            self._require_token()
            if seg[1] == "create" and method == "POST":
                return self._create_repo()
            if seg[1] == "delete" and method == "DELETE":
                return self._delete_repo()
        if not seg or seg[0] not in TYPES:
            raise HttpError(404, f"no route for {method} {self.path}")
        repo_type = TYPES[seg[0]]
        if len(seg) == 1 and method == "GET":
            return self._list(repo_type)
        if len(seg) < 3:
            raise HttpError(404, f"no route for {method} {self.path}")
        ref = repo_ref(repo_type, seg[1], seg[2])
        rest = seg[3:]
        if not rest and method == "GET":
            return self._info(ref, None)
        action, args = rest[0], rest[1:]
        if action == "revision" and len(args) == 1 and method == "GET":
            return self._info(ref, args[0])
        if action == "tree" and args and method == "GET":
            return self._tree(ref, args[0], "/".join(args[1:]))
        if action == "paths-info" and len(args) == 1 and method == "POST":
            return self._paths_info(ref, args[0])
        if action == "commits" and len(args) == 1 and method == "GET":
            return self._commits(ref, args[0])
        if action == "refs" and not args and method == "GET":
            return self._refs(ref)
        if action == "preupload" and len(args) == 1 and method == "POST":
            self._require_token()
            return self._preupload(ref, args[0])
        if action == "commit" and len(args) == 1 and method == "POST":
            self._require_token()
            return self._commit(ref, args[0])
        raise HttpError(404, f"no route for {method} {self.path}")

    # ------------------------------------------------------------ request bodies

    # ------------------------------------------------------------ request bodies

    @contextlib.contextmanager
    def _spooled_body(self):
        """The whole body in an anonymous temporary file (localhub.bodies), at most `max_body`
        bytes; closed (and gone) when the block ends."""
        if self._body_read:
            raise HttpError(400, "the request body was already read")
        self._body_read = True
        limit = self.server.config.max_body
        try:
            fh = spool(body_chunks(self.headers, self.rfile, limit), self.server.storage.staging_dir())
        except HttpError:
            self.close_connection = True
            raise
        try:
            yield fh
        finally:
            fh.close()

    def _read_body(self) -> bytes:
        """A small body (JSON documents, forms), bounded by MAX_JSON_BODY."""
        if getattr(self, "_small_body", None) is not None and self._body_read:
            return self._small_body
        with self._spooled_body() as fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            if size > MAX_JSON_BODY:
                raise HttpError(413, f"a body of {size} bytes is over the {MAX_JSON_BODY}-byte limit for this route")
            self._small_body = fh.read()
        return self._small_body

    def _drain_or_close(self) -> None:
        """Read an unread body to its end (keep-alive), or close the connection."""
        self._body_read = True
        try:
            for _ in body_chunks(self.headers, self.rfile, self.server.config.max_body):
                pass
        except (HttpError, OSError):
            self.close_connection = True

    def _json_body(self) -> dict:
        body = self._read_body()
        return parse_json_object(io.BytesIO(body), len(body))

    def _require_token(self) -> None:
        expected = self.server.config.token
        if expected is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            raise HttpError(401, "Invalid credentials in Authorization header")

    # ------------------------------------------------------------ responses

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers=headers)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": _header_safe(message)}
        if code:
            headers["X-Error-Code"] = code
        try:
            self._json({"error": message}, status, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _base_url(self) -> str:
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"http://{host}"

    def _commit_for(self, ref: RepoRef, revision: str | None) -> Commit:
        if revision is not None:
            check_revision(revision)
        return self.server.storage.resolve(ref, revision)


def _header_safe(text: str) -> str:
    return text.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")[:500]
