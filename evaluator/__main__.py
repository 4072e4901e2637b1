"""`python -m evaluator evaluate REPO_ID [--revision REV] [--env ENV_ID] [--episodes N]
[--no-video] [--store DIR | --no-store] [--json]`: parse, call the library, print.

Exit codes: 0 finished, 1 the agent or the input was at fault, 2 usage, 3 transient (retry).
With --json, stdout is exactly one JSON document (the EvalResult, also on failure).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import ErrorCode, ExitCode
from .text import clean_text


def _positive(text: str) -> int:
    """A whole number >= 1; argparse prefixes the message with the option's name."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluator", description="Verified evaluation of Hub RL agents")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="evaluate one Hub repo and record the result")
    ev.add_argument("repo_id", help="Hub repo id, e.g. sb3/ppo-LunarLander-v2")
    ev.add_argument("--revision", help="branch or commit sha (default: main, pinned to its sha)")
    ev.add_argument("--env", dest="env_id", help="env id to evaluate on (default: the one the repo states)")
    ev.add_argument("--episodes", type=_positive, help="override the protocol's episode count (result unranked)")
    ev.add_argument("--processes", type=_positive, default=1,
                    help="split the episodes over N processes (same per-episode results)")
    ev.add_argument("--no-video", action="store_true", help="do not record a replay")
    where = ev.add_mutually_exclusive_group()
    where.add_argument("--store", type=Path, help="results store folder (default: $RL_LEADERBOARD_STORE "
                                                  "or ~/.local/share/rl-leaderboard)")
    where.add_argument("--no-store", action="store_true", help="do not record the result")
    ev.add_argument("--json", action="store_true", help="print the EvalResult as one JSON document")
    return parser


def _progress_printer():
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\r  episodes [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def summary(result) -> str:
    head = f"{result.repo_id} @ {(result.revision or '?')[:10]}"
    if result.env_key:
        alias = f" (repo says {result.env_id})" if result.env_id and result.env_id != result.env_key else ""
        head += f" on {result.env_key}{alias}"
    lines = [head]
    if result.finished:
        lines.append(
            f"  {result.algo or '?'} [{result.format}]: mean {result.mean_reward:.2f} +/- {result.std_reward:.2f} "
            f"over {result.n_episodes} episodes ({result.seed_set} seeds); score {result.score:.2f}, "
            f"IQM {result.iqm:.2f}, 95% CI [{result.ci95[0]:.2f}, {result.ci95[1]:.2f}]"
            + ("" if result.ranked else "  (unranked: protocol overridden)"))
    else:
        lines.append(f"  FAILED [{result.error_code}]: {result.error}")
    lines.extend(f"  note: {note}" for note in result.notes)
    lines.extend(_pickle_lines(result))
    claim = result.claim
    if claim.mean_reward is not None:
        std = f" +/- {_number(claim.std_reward)}" if claim.std_reward is not None else ""
        lines.append(f"  card claims {_number(claim.mean_reward)}{std} (n={claim.n_episodes}): {claim.verdict}")
    else:
        lines.append("  card claims nothing parseable: absent")
    return "\n".join(lines)


def _pickle_lines(result) -> list[str]:
    """The unsafe-content report, in words (what no leaderboard tells users today)."""
    if result.pickle_imports is None:
        return []
    if not result.pickle_unsafe:
        return [f"  pickles: {len(result.pickle_imports)} globals named, all on the benign list"]
    from .pickle_report import loader_call, unsafe_imports

    risky = unsafe_imports(result.pickle_imports) or ["a global outside the benign list"]
    shown = ", ".join(risky[:8]) + (f" and {len(risky) - 8} more" if len(risky) > 8 else "")
    return [f"  UNSAFE PICKLES: loading this repo with {loader_call(result.format, result.algo)} would run {shown}"
            " (read here opcode by opcode, never run: this evaluation loaded the agent as data)"]


def _number(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 1e9 else f"{value:.4g}"


def exit_code(result) -> int:
    if result.finished:
        return ExitCode.OK
    if result.error_code == ErrorCode.HUB_UNAVAILABLE.value:
        return ExitCode.TRANSIENT
    return ExitCode.FAILED


def _usage_error(args, message: str, code: ErrorCode | None = None) -> int:
    """A usage error (exit 2): nothing evaluated, nothing recorded; with --json, still one
    EvalResult document on stdout."""
    if args.json:
        from .result import EvalResult

        print(EvalResult(repo_id=clean_text(args.repo_id, 200), error_code=code.value if code else None,
                         error=message).to_json())
    print(f"error: {message}", file=sys.stderr)
    return ExitCode.USAGE


def cmd_evaluate(args) -> int:
    from .errors import InvalidRepoIdError
    from .evaluate import evaluate
    from .hub import check_repo_id

    try:
        args.repo_id = check_repo_id(args.repo_id)
    except InvalidRepoIdError as err:
        return _usage_error(args, str(err), err.code)
    store = video_path = None
    if not args.no_store:
        from leaderboard.store import Store, default_store_dir  # lazy: the one allowed upward import

        folder = args.store or default_store_dir()
        if folder.exists() and not folder.is_dir():
            return _usage_error(args, f"the store folder {folder} is not a folder (a file is in the way): pass "
                                      "--store DIR with a folder, or --no-store")
        store = Store(folder)
        if not args.no_video:
            video_path = store.new_video_path()  # record() moves it to replays/ and makes it relative
    result = evaluate(args.repo_id, revision=args.revision, env_id=args.env_id, episodes=args.episodes,
                      processes=args.processes, video_path=video_path, progress=_progress_printer())
    recorded = True
    if store is not None:
        from leaderboard.submit import commit_date

        try:
            date = commit_date(args.repo_id, result.revision) if result.revision else None
            store.record(result, commit_date=date)
            print(f"recorded in {store.results_path}" + (f" (replay {result.video})" if result.video else ""),
                  file=sys.stderr)
        except Exception as err:  # the store failing must not swallow the result: it is still printed
            recorded = False
            print(f"error: the result was NOT recorded in the store {store.root} ({type(err).__name__}: "
                  f"{clean_text(str(err), 500)}); the result is printed below", file=sys.stderr)
        finally:
            if video_path is not None:
                video_path.unlink(missing_ok=True)
    if args.json:
        print(result.to_json())
    else:
        print(summary(result))
    code = exit_code(result)
    return ExitCode.FAILED if code == ExitCode.OK and not recorded else code


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "evaluate":
        return cmd_evaluate(args)
    return ExitCode.USAGE


if __name__ == "__main__":
    sys.exit(main())
