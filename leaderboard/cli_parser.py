"""The argument parser of `python -m leaderboard` (its commands, options and defaults): the CLI
module stays the commands' thin bodies."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .queue import DEFAULT_LEASE_SECONDS, Status
from .ranking import SORTS
from .worker import DEFAULT_POLL_SECONDS, DEFAULT_SYNC_SECONDS


def _positive(kind):
    expected = "a whole number of at least 1" if kind is int else "a positive number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")  # argparse names the option
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=None,
                        help="store folder (default: $RL_LEADERBOARD_STORE or ~/.local/share/rl-leaderboard)")
    common.add_argument("--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT, else huggingface.co)")
    common.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    hub = argparse.ArgumentParser(add_help=False)
    hub.add_argument("--hub-dataset", metavar="NS/NAME",
                     help="publish the store to this Hub dataset repo (history shards, leaderboard.parquet, replays; "
                          "requests/ ingested)")
    hub.add_argument("--create", action="store_true", help="create the Hub dataset if it does not exist")

    parser = argparse.ArgumentParser(prog="python -m leaderboard", description="The verified RL leaderboard")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", parents=[common], help="queue a Hub repo for evaluation")
    p.add_argument("repo_id", help="Hub model repo id, e.g. sb3/ppo-CartPole-v1")
    p.add_argument("--env", dest="env_id", help="env id to evaluate on (default: the one the repo states)")
    p.add_argument("--revision", help="branch or commit sha (default: main, pinned to its sha now)")
    p.add_argument("--episodes", type=_positive(int), help="override the episode count (the result is unranked)")
    p.add_argument("--submitter", help="who asks (default: cli:$USER)")
    p.add_argument("--json", action="store_true", help="print the request as one JSON document")

    p = sub.add_parser("worker", parents=[common, hub], help="evaluate queued requests")
    p.add_argument("--once", action="store_true", help="exit when no request is due instead of waiting for more")
    p.add_argument("--concurrency", type=_positive(int), default=1, help="queue worker processes (default 1)")
    p.add_argument("--lease", type=_positive(float), default=DEFAULT_LEASE_SECONDS,
                   help=f"lease seconds, renewed every lease/4 (default {DEFAULT_LEASE_SECONDS:g})")
    p.add_argument("--poll", type=_positive(float), default=DEFAULT_POLL_SECONDS,
                   help=f"seconds between looks at an empty queue (default {DEFAULT_POLL_SECONDS:g})")
    p.add_argument("--sync-interval", type=_positive(float), default=DEFAULT_SYNC_SECONDS,
                   help=f"seconds between publications with --hub-dataset (default {DEFAULT_SYNC_SECONDS:g})")
    p.add_argument("--no-video", action="store_true", help="do not record replays")
    p.add_argument("--quiet", action="store_true", help="no line per request, no progress bar")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local processes (default), or Ray tasks (pip install -r requirements-ray.txt)")
    p.add_argument("--address", help="with --backend ray: the Ray cluster to join (default: a local Ray on 127.0.0.1)")
    p.add_argument("--num-cpus", type=_positive(int),
                   help="with --backend ray and no --address: CPUs of the local Ray (default: this machine's)")
    p.add_argument("--max-in-flight", type=_positive(int),
                   help="with --backend ray: evaluations submitted at once (default: the cluster's CPUs + 1)")

    p = sub.add_parser("sweep", parents=[common], help="discover agents on the Hub and queue them")
    p.add_argument("--filter", dest="filters", action="append", metavar="TAG",
                   help="Hub tag every listed repo has (repeatable; default: reinforcement-learning)")
    p.add_argument("--author", help="only this user's or organisation's repos")
    p.add_argument("--env", dest="env_id", help="only agents of this env (listed by its tag, checked by env key)")
    p.add_argument("--search", help="only repos whose id contains this")
    p.add_argument("--limit", type=_positive(int), help="list at most this many repos")
    p.add_argument("--protocol-changed", action="store_true",
                   help="queue again every ranked row of an older protocol version (from the store: no listing)")
    p.add_argument("--dry-run", action="store_true", help="count what would be queued, queue nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")

    p = sub.add_parser("show", parents=[common], help="print the ranking")
    p.add_argument("--hub-dataset", metavar="NS/NAME",
                   help="print the ranking this Hub dataset publishes (its leaderboard.parquet) instead of the store's")
    p.add_argument("--env", dest="env_id", help="only this env (an env id or env key)")
    p.add_argument("--search", help="only repos whose id contains this (case-insensitive)")
    p.add_argument("--algo", help="only this algorithm (e.g. ppo)")
    p.add_argument("--verdict", choices=["consistent", "inflated", "unverifiable", "absent"],
                   help="only this claim verdict")
    p.add_argument("--sort", choices=list(SORTS), help="order (default: score, the ranking)")
    p.add_argument("--limit", type=_positive(int), help="at most this many rows")
    p.add_argument("--offset", type=int, default=0, help="skip this many rows")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON document: a list of ranked rows")
    fmt.add_argument("--csv", action="store_true", help="CSV of the ranked rows")

    p = sub.add_parser("requests", parents=[common], help="list the submission requests")
    p.add_argument("--status", choices=[s.value for s in Status], help="only requests in this status")
    p.add_argument("--json", action="store_true", help="one JSON document: a list of requests")

    p = sub.add_parser("remove", parents=[common, hub], help="take a repo down from the ranking (kept in history)")
    p.add_argument("repo_id")
    p.add_argument("--reason", help="why (kept with the rows)")

    p = sub.add_parser("export", parents=[common], help="write the history and the ranking for analysis")
    p.add_argument("directory", type=Path)
    p.add_argument("--format", choices=["parquet", "csv"], default="parquet", help="file format (default parquet)")

    p = sub.add_parser("publish", parents=[common, hub], help="publish the store to its Hub dataset once")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")

    p = sub.add_parser("certify", parents=[common], help="the course units a user passed, on verified scores")
    p.add_argument("user", help="Hub username (the namespace of their repos)")
    p.add_argument("--json", action="store_true", help="one JSON document: the units and the summary")

    sub.add_parser("backup", parents=[common], help="back the database up now (backups/leaderboard.sqlite3)")
    sub.add_parser("restore", parents=[common], help="replace a damaged database with its last backup")
    return parser


# Commands that only read a store: a store folder that does not exist is a mistake to say, not an
# empty leaderboard to show (the others create it).
