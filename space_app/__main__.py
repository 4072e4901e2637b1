"""`python -m space_app [--store DIR | --hub-dataset NS/NAME] [--host 127.0.0.1] [--port 7860]`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m space_app", description="Serve the leaderboard's Space")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--store", type=Path, help="a store folder (default: $RL_LEADERBOARD_STORE or the user's)")
    where.add_argument("--hub-dataset", metavar="NS/NAME", default=os.environ.get("RL_SPACE_DATASET"),
                       help="read a Hub dataset the head publishes to (default: $RL_SPACE_DATASET)")
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT, else huggingface.co)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    args = parser.parse_args(argv)
    if args.store is not None and not args.store.is_dir():
        parser.error(f"--store {args.store}: no such store folder")

    from . import build_demo
    from .app import CSS
    from .source import open_source

    source = open_source(args.store, args.hub_dataset, endpoint=args.endpoint)
    allowed = [str(source.store.replays_dir)] if source.mode == "store" else []
    demo = build_demo(source=source)
    print(f"space_app: serving {source.where} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    demo.queue(default_concurrency_limit=8).launch(server_name=args.host, server_port=args.port,
                                                   allowed_paths=allowed, show_error=True, footer_links=["api"],
                                                   css=CSS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
