"""`python -m localhub serve ROOT [--host 127.0.0.1] [--port N] [--token T] [--state DIR]
[--allow-anonymous-writes] [--max-connections N]`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .server import DEFAULT_MAX_CONNECTIONS, DEFAULT_PAGE_SIZE, HubConfig, InsecureBindError, make_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localhub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve ROOT as a Hub (ROOT/ns/name = model repo, "
                                         "ROOT/datasets/ns/name = dataset repo)")
    serve.add_argument("root", type=Path)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8799)
    serve.add_argument("--token", default=None, help="refuse writes without this bearer token")
    serve.add_argument("--state", type=Path, default=None,
                       help="history and uploads (default: ROOT/.localhub if writable, else a user cache)")
    serve.add_argument("--allow-anonymous-writes", action="store_true",
                       help="accept writes without a token on a non-loopback --host (never needed on 127.0.0.1)")
    serve.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                       help=f"connections served at once; more get HTTP 503 (default {DEFAULT_MAX_CONNECTIONS})")
    serve.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    serve.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        server = make_server(args.root, host=args.host, port=args.port, state=args.state,
                             config=HubConfig(token=args.token, page_size=args.page_size,
                                              max_connections=args.max_connections,
                                              allow_anonymous_writes=args.allow_anonymous_writes))
    except (FileNotFoundError, OSError, InsecureBindError) as err:
        print(f"localhub: {err}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"localhub serving {args.root} at http://{host}:{port} (state: {server.storage.state})",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
