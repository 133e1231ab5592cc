"""`routellm-batch sandbox serve`: run the sandbox batch-API server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from routellm_batch.config import ConfigError

__all__ = ["add_arguments", "run"]


def _alias(text: str) -> tuple[str, str]:
    name, sep, recorded = text.partition("=")
    if not sep or not name or not recorded:
        raise argparse.ArgumentTypeError(f"expected NAME=RECORDED_MODEL, got {text!r}")
    return name, recorded


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["serve"], help="serve: run the server until interrupted")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--responder", choices=["synthetic", "replay"], default="synthetic")
    parser.add_argument(
        "--replay-csv",
        type=Path,
        help="recorded answers for --responder replay: prompt/model/response table or GSM8K-style CSV",
    )
    parser.add_argument(
        "--model-alias",
        type=_alias,
        action="append",
        default=[],
        metavar="NAME=RECORDED",
        help="map a requested model onto a recorded one (repeatable; NAME '*' = any other model)",
    )
    parser.add_argument("--faults", type=Path, help="YAML file of fault settings (Faults fields)")
    parser.add_argument("--tick-seconds", type=float, default=0.5, help="seconds per batch state step")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic responder")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="keep batches, files and billing in this directory across restarts (default: memory only)",
    )


def _build(args: Any) -> Any:
    from routellm_batch.sandbox.faults import Faults
    from routellm_batch.sandbox.responders import ReplayResponder, SyntheticResponder
    from routellm_batch.sandbox.server import SandboxServer, StateError

    if args.tick_seconds < 0:
        raise ConfigError("--tick-seconds: must be >= 0")
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port: must be between 0 and 65535")
    try:
        faults = Faults.from_yaml(args.faults) if args.faults else Faults()
    except OSError as exc:
        raise ConfigError(f"--faults {args.faults}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"--faults: {exc}") from None
    if args.responder == "replay":
        if args.replay_csv is None:
            raise ConfigError("--replay-csv: required with --responder replay")
        try:
            responder: Any = ReplayResponder.load(args.replay_csv, dict(args.model_alias))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--replay-csv {args.replay_csv}: {exc}") from None
    else:
        responder = SyntheticResponder(seed=args.seed)
    try:
        return SandboxServer(
            responder=responder, faults=faults, tick_seconds=args.tick_seconds, port=args.port, state_dir=args.state_dir
        )
    except StateError as exc:
        raise ConfigError(f"--state-dir: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"--state-dir {args.state_dir}: {exc.strerror}") from None


def run(args: Any) -> int:
    server = _build(args)
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with server:
            print(f"OPENAI_BASE_URL={server.openai_base_url}", flush=True)
            print(f"ANTHROPIC_BASE_URL={server.anthropic_base_url}", flush=True)
            print("any non-empty API key is accepted; Ctrl-C stops the server", flush=True)
            while not stop.wait(0.5):
                pass
            stats = server.stats()
            print(f"stopped; batches created {stats['batches_created']}, requests billed {stats['requests_billed']}", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
