"""`routellm-batch <command>`: one subcommand per stage or tool.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their command runs, so `--help` stays fast and light.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys

from routellm_batch._extras import MissingExtra, needs_extra
from routellm_batch.config import ConfigError

# Commands that write a run date's tables or spend money: each holds the run's lease (one process per run date).
LEASED = frozenset({"validate", "score", "split", "submit", "wait", "collect", "escalate", "audit", "report", "run", "nightly"})
EXIT_USER_ERROR = 2
EXIT_LEASE_HELD = 75  # EX_TEMPFAIL: another process is on this run date; try again later

COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("routellm_batch.stages.validate", "Stage 1: validate the input table, quarantine bad rows."),
    "score": ("routellm_batch.stages.score", "Stage 2: score every valid prompt with the router."),
    "split": ("routellm_batch.stages.split", "Stage 3: apply the threshold policy -> routed table."),
    "submit": ("routellm_batch.stages.submit", "Stage 4: shard queues into provider batches and submit them."),
    "wait": ("routellm_batch.stages.wait", "Stage 5: poll until every batch of the run is terminal."),
    "collect": ("routellm_batch.stages.collect", "Stage 6: download results -> responses table; resubmit retryables."),
    "escalate": ("routellm_batch.stages.escalate", "Cascade pass 2: escalate the most doubtful weak answers to the strong model."),
    "audit": ("routellm_batch.stages.audit", "Audit slice: a hashed share of each queue answered by the other model and labelled."),
    "report": ("routellm_batch.stages.report", "Stage 7: cost account per model from reported usage; invariant checks."),
    "run": ("routellm_batch.stages.run", "Run every stage of one run date, in order; resumes a run that died."),
    "nightly": ("routellm_batch.stages.run", "Alias of `run`."),
    "calibrate": ("routellm_batch.stages.calibrate", "Print the threshold that gives a strong fraction on a sample."),
    "learn": ("routellm_batch.stages.learn", "Learn a router for this job's prompts via the batch APIs; out-of-fold report."),
    "train": ("routellm_batch.routers.training", "Train a router from battles or per-model outcomes."),
    "evaluate": ("routellm_batch.evaluation", "Out-of-sample routing quality: APGR, CPT, baselines, plot."),
    "sandbox": ("routellm_batch.sandbox.cli", "Run the local sandbox batch-API server."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routellm-batch", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and a line per HTTP call")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    # Parse the command name first, then hand the rest to that command's own parser.
    known, rest = top.parse_known_args(argv)
    module_name, help_text = COMMANDS[known.command]
    try:
        with needs_extra("this command"):
            module = importlib.import_module(module_name)
    except MissingExtra as exc:
        print(f"routellm-batch {known.command}: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    from routellm_batch.lease import LeaseHeld
    parser = argparse.ArgumentParser(prog=f"routellm-batch {known.command}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    # --verbose: our own debug lines plus every HTTP call; libraries' debug output stays off.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if known.verbose:
        logging.getLogger("routellm_batch").setLevel(logging.DEBUG)
    else:
        for noisy in ("great_expectations", "py4j", "httpx", "httpx2", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        _quiet_spark()
    try:
        with _lease(known.command, args), _progress(known.command, args), needs_extra("this command"):
            return int(module.run(args) or 0)
    except ConfigError as exc:
        print(f"routellm-batch {known.command}: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except LeaseHeld as exc:
        print(f"routellm-batch {known.command}: {exc}", file=sys.stderr)
        return EXIT_LEASE_HELD
    except KeyboardInterrupt:
        # Ctrl-C, or the lease's heartbeat found another process holding the run (logged above).
        print(f"routellm-batch {known.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        line = user_error(exc)
        if line is None or known.verbose:
            raise  # a bug, or --verbose: the whole traceback
        print(f"routellm-batch {known.command}: {line}", file=sys.stderr)
        return EXIT_USER_ERROR


# Errors a user's input, config or machine causes, by class name (their modules are imported only
# by the commands that raise them): one line each, never a traceback.
_USER_ERRORS = frozenset({
    "InputError", "QuarantineLimitExceeded", "MissingInput", "BudgetTooSmall", "OutcomeInvariantError", "MissingExtra",
    "OutputSuiteFailed",
    "FileNotFoundError", "NotADirectoryError", "PermissionError",
})  # fmt: skip


def user_error(exc: BaseException) -> str | None:
    """The one line to print for a mistake a user can make; None for anything else (a bug)."""
    import os

    name = type(exc).__name__
    text = str(exc)
    condition = getattr(exc, "getCondition", lambda: None)() or ""
    if condition == "PATH_NOT_FOUND" or "[PATH_NOT_FOUND]" in text:
        path = text.split("Path does not exist:", 1)[-1].split(". SQLSTATE", 1)[0].strip()
        return f"the input does not exist: {path} (check input.uri and --run-date)"
    if condition == "JAVA_GATEWAY_EXITED" or "[JAVA_GATEWAY_EXITED]" in text:
        java_home = os.environ.get("JAVA_HOME")
        where = f"JAVA_HOME={java_home} has no bin/java" if java_home and not os.path.exists(f"{java_home}/bin/java") else "Java did not start"
        return f"Spark needs Java 17: {where}; install a JDK 17 and set JAVA_HOME to it (or put java on PATH)"
    if isinstance(exc, _provider_error_class()):
        hint = " (is the model's base_url right and reachable?)" if "connection error" in text.lower() else ""
        return text.splitlines()[0] + hint
    if name in _USER_ERRORS:
        return " ".join(text.split())
    return None


def _provider_error_class() -> type[BaseException]:
    from routellm_batch.providers.errors import ProviderError

    return ProviderError


_QUIET_LOG4J = """\
rootLogger.level = error
rootLogger.appenderRef.console.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n
"""


def _quiet_spark() -> None:
    """Spark's startup banner and WARN lines off (errors still print); --verbose leaves them on.
    A session started elsewhere (spark-submit, PYSPARK_SUBMIT_ARGS already set) is left alone."""
    import os
    import tempfile

    os.environ.setdefault("ROUTELLM_BATCH_SPARK_LOG_LEVEL", "ERROR")
    if "PYSPARK_SUBMIT_ARGS" in os.environ or "PYSPARK_GATEWAY_PORT" in os.environ:
        return
    path = os.path.join(tempfile.gettempdir(), "routellm-batch-log4j2-quiet.properties")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(_QUIET_LOG4J)
    os.environ["PYSPARK_SUBMIT_ARGS"] = f"--driver-java-options -Dlog4j2.configurationFile=file:{path} pyspark-shell"


def _progress(command: str, args: argparse.Namespace) -> contextlib.AbstractContextManager[object]:
    """Progress of the batch stages run alone (`run` shows it per stage itself)."""
    if command not in ("submit", "wait", "collect"):
        return contextlib.nullcontext()
    from routellm_batch.config import load_config
    from routellm_batch.progress import LedgerProgress

    return LedgerProgress(load_config(args.config), args.run_date)


def _lease(command: str, args: argparse.Namespace) -> contextlib.AbstractContextManager[object]:
    """The run date's lease for commands that write its tables or spend money (see routellm_batch.lease)."""
    if command not in LEASED:
        return contextlib.nullcontext()
    from routellm_batch.config import load_config
    from routellm_batch.lease import run_lease

    return run_lease(load_config(args.config), args.run_date, stage=command)


if __name__ == "__main__":
    sys.exit(main())
