"""The layout of a Hugging Face Space that serves the leaderboard from a Hub dataset.

    python -m space_app.deploy OUT_DIR --dataset NS/NAME [--title T]

writes a folder to push as a Space repo (`huggingface-cli upload NS/SPACE OUT_DIR --repo-type
space`): `README.md` with the Space metadata (`sdk: gradio`, `app_file: app.py`, the pinned
gradio version), `app.py` (reads the dataset named in `RL_SPACE_DATASET`, set from `--dataset`,
and listens where Spaces expects: 0.0.0.0:7860), `requirements.txt` (the runtime requirements,
pinned by this project's constraints), and copies of the `evaluator`, `leaderboard` and
`space_app` packages. The Space only reads `leaderboard.parquet` and replays from the dataset
and writes `requests/*.json` to it (with a token that can write the dataset, as the Space's
`HF_TOKEN` secret); a head with queue workers (`python -m leaderboard worker --hub-dataset`)
evaluates and publishes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = ("evaluator", "leaderboard", "space_app")
# What the Space imports (it reads and renders; it never loads an agent: no torch, no SB3, no box2d)
SPACE_NEEDS = ("gymnasium", "huggingface_hub", "numpy", "scipy", "pandas", "pyarrow", "pyyaml", "tqdm")
_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

APP = '''"""Hugging Face Space entry point (written by space_app.deploy)."""
import os

from space_app import build_demo
from space_app.app import CSS

DATASET = os.environ.get("RL_SPACE_DATASET") or {dataset!r}
demo = build_demo(hub_dataset=DATASET)

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=8).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), css=CSS)
'''


def _pins() -> dict[str, str]:
    pins = {}
    for line in (PROJECT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def requirements() -> list[str]:
    """The Space's requirements (SPACE_NEEDS, as requirements.txt names them), each pinned to
    constraints.txt's version."""
    pins, lines = _pins(), []
    for line in (PROJECT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0]
        if name.lower() not in SPACE_NEEDS:
            continue
        version = pins.get(name.lower().replace("_", "-"))
        lines.append(f"{name}=={version}" if version else line)
    return lines


def write_layout(out: Path, dataset: str, *, title: str = "Verified RL Leaderboard") -> Path:
    if not _DATASET.match(dataset):
        raise ValueError(f"{dataset!r} is not a Hub dataset id (namespace/name)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gradio = _pins().get("gradio", "")
    (out / "README.md").write_text(
        f"---\ntitle: {title}\nemoji: 🏆\ncolorFrom: blue\ncolorTo: green\nsdk: gradio\n"
        f"sdk_version: {gradio}\napp_file: app.py\npinned: false\n---\n\n# {title}\n\n"
        f"Every score is measured by the evaluator on seeded episodes. Data: the Hub dataset `{dataset}`, "
        "published by the leaderboard's head.\n")
    (out / "app.py").write_text(APP.format(dataset=dataset))
    (out / "requirements.txt").write_text("\n".join(requirements()) + "\n")  # gradio: the sdk brings it
    for package in PACKAGES:
        target = out / package
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(PROJECT / package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m space_app.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the Space into")
    parser.add_argument("--dataset", required=True, metavar="NS/NAME", help="the Hub dataset the head publishes to")
    parser.add_argument("--title", default="Verified RL Leaderboard")
    args = parser.parse_args(argv)
    try:
        out = write_layout(args.out, args.dataset, title=args.title)
    except ValueError as err:
        parser.error(str(err))
    print(f"Space layout written to {out}: push it as a Space repo (sdk: gradio)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
