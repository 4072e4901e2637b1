"""The Gradio Space of the leaderboard: browse every verified score, watch replays, compare two
agents on shared seeds, certify course units, submit by repo id.

`python -m space_app [--store DIR | --hub-dataset NS/NAME] [--host 127.0.0.1] [--port 7860]`;
`space_app.build_demo(...)` returns the `gr.Blocks`. Importing this package does no heavy work
(gradio is imported by `build_demo`). Modules: `source` (store or Hub dataset, last good data),
`service` (what each view asks), `render` (markup and charts), `about`, `app` (the Blocks),
`deploy` (the layout of a Hugging Face Space).
"""

from __future__ import annotations

from typing import Any


def build_demo(store: Any = None, hub_dataset: str | None = None, **kwargs: Any):
    """The Space's `gr.Blocks` (see `space_app.app.build_demo`)."""
    from .app import build_demo as build

    return build(store, hub_dataset, **kwargs)


__all__ = ["build_demo"]
