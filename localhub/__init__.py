"""localhub: a Hugging Face Hub-compatible server for offline use, demos and tests.

`serve(root)` starts one in a background thread; point `huggingface_hub` at its `.url`
(`HF_ENDPOINT`, or `endpoint=`). Library code never imports this package: it is a server.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .server import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PAGE_SIZE,
    HubConfig,
    InsecureBindError,
    RunningHub,
    make_server,
)

__all__ = ["serve", "RunningHub", "HubConfig", "InsecureBindError"]


def serve(root: str | Path, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
          state: str | Path | None = None, page_size: int = DEFAULT_PAGE_SIZE,
          max_body: int = DEFAULT_MAX_BODY, max_connections: int = DEFAULT_MAX_CONNECTIONS,
          allow_anonymous_writes: bool = False) -> RunningHub:
    """Serve `root` in a daemon thread and return at once; `port=0` picks a free port. Without a
    token, a host other than a loopback address needs `allow_anonymous_writes=True`."""
    config = HubConfig(token=token, page_size=page_size, max_body=max_body, max_connections=max_connections,
                       allow_anonymous_writes=allow_anonymous_writes)
    server = make_server(Path(root), host=host, port=port,
                         state=Path(state) if state else None, config=config)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="localhub", daemon=True)
    thread.start()
    return RunningHub(server, thread)
