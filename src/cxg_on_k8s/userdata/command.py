"""A data container must end with an exit code and, on failure, one line in its termination log,
whatever happened. This is the one place that turns the pod's ``fetch`` or ``sync`` arguments
into calls and every outcome, an unexpected one too, into that code and that line.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from cxg_on_k8s.userdata.errors import ExitCode, UserDataError, write_termination_log
from cxg_on_k8s.userdata.fetch import fetch
from cxg_on_k8s.userdata.retry import DEFAULT_BACKOFF, DEFAULT_RETRIES
from cxg_on_k8s.userdata.s3 import parse_s3_url, s3_client
from cxg_on_k8s.userdata.state import USER_FILES
from cxg_on_k8s.userdata.sync import DEFAULT_SETTLE, Syncer

log = logging.getLogger("cxg_on_k8s.userdata")

TERMINATION_LOG = "/dev/termination-log"
# The operator always passes --interval (its save_interval setting, whose default this is); this
# default serves a sync started by hand.
DEFAULT_INTERVAL = 120.0


def _default_termination_log() -> Path | None:
    path = Path(TERMINATION_LOG)
    return path if os.access(path, os.W_OK) else None


def _max_bytes(quantity: str | None) -> int | None:
    """``--max-size`` in bytes, read as Kubernetes reads a quantity (the operator's setting is one)."""
    if not quantity:
        return None
    # Imported here: the kubernetes package costs a second and some 30 MB that sync never needs.
    from kubernetes.utils import parse_quantity

    return int(parse_quantity(quantity))


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--termination-log",
        metavar="PATH",
        type=Path,
        default=None,
        help=f"File that receives the one-line failure message (default: {TERMINATION_LOG} if "
        "writable, else none). Kubernetes shows it in the container status.",
    )
    common.add_argument(
        "--retries",
        metavar="N",
        type=int,
        default=DEFAULT_RETRIES,
        help=f"Retries of a failed transfer while the store is unreachable or failing (default {DEFAULT_RETRIES}).",
    )
    common.add_argument(
        "--backoff",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_BACKOFF,
        help=f"Seconds before the first retry; doubled each time, at most 30 (default {DEFAULT_BACKOFF}).",
    )
    parser = argparse.ArgumentParser(
        prog="python -m cxg_on_k8s.userdata",
        description="Fetch a cellxgene dataset and the user's annotations from S3, and save them back.",
        epilog="Exit codes: 0 ok, 1 unexpected, 2 bad arguments, 3 object not found, "
        "4 access denied, 5 store unreachable, 6 corrupt dataset, 7 final save failed, "
        "8 dataset too large. "
        "S3 settings come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION "
        "and AWS_ENDPOINT_URL.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser(
        "fetch",
        parents=[common],
        help="Download the dataset and the user's saved files (init container).",
    )
    fetch_cmd.add_argument(
        "--dataset",
        metavar="URL",
        required=True,
        help="s3://bucket/key.h5ad or https://host/path.h5ad.",
    )
    fetch_cmd.add_argument(
        "--user-data",
        metavar="URL",
        required=True,
        help="s3://bucket/prefix/ with the user's annotations.csv and gene_sets.csv.",
    )
    fetch_cmd.add_argument(
        "--legacy-user-data",
        metavar="URL",
        default=None,
        help="s3://bucket/prefix/ where earlier versions saved by default; read once when "
        "--user-data holds nothing yet (default: none).",
    )
    fetch_cmd.add_argument(
        "--max-size",
        metavar="QUANTITY",
        default=None,
        help="Largest dataset to download, e.g. 16Gi; larger fails with exit code 8 (default: no limit).",
    )
    fetch_cmd.add_argument(
        "--dest",
        metavar="DIR",
        type=Path,
        default=Path("/data"),
        help="Target directory (default /data).",
    )
    sync_cmd = commands.add_parser(
        "sync",
        parents=[common],
        help="Save the user's files back whenever they change, and once more on SIGTERM (sidecar).",
    )
    sync_cmd.add_argument("--user-data", metavar="URL", required=True, help="s3://bucket/prefix/ to save to.")
    sync_cmd.add_argument(
        "--src",
        metavar="DIR",
        type=Path,
        default=Path("/data"),
        help="Directory cellxgene writes to (default /data).",
    )
    sync_cmd.add_argument(
        "--interval",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_INTERVAL,
        help=f"Seconds between saves (default {DEFAULT_INTERVAL:g}; the operator passes its save_interval setting).",
    )
    sync_cmd.add_argument(
        "--settle",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_SETTLE,
        help=f"Seconds between the two reads that must agree before a file is saved (default {DEFAULT_SETTLE}).",
    )
    return parser


def _run(args: argparse.Namespace, termination_log: Path | None) -> int:
    if args.command == "fetch":
        fetch(
            args.dataset,
            args.user_data,
            args.dest,
            retries=args.retries,
            backoff=args.backoff,
            max_bytes=_max_bytes(args.max_size),
            legacy_user_data=args.legacy_user_data,
        )
        return ExitCode.OK
    prefix = parse_s3_url(args.user_data, what="--user-data", prefix=True)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("got %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    syncer = Syncer(
        s3_client(),
        prefix,
        args.src,
        retries=args.retries,
        backoff=args.backoff,
        settle=args.settle,
        termination_log=termination_log,
    )
    log.info("saving %s/{%s} to %s every %.0f s", args.src, ",".join(USER_FILES), prefix, args.interval)
    saved = syncer.run(args.interval, stop)
    s = syncer.stats
    log.info(
        "sync stopped: %d passes, %d saves, %d unchanged, %d skipped, %d failed",
        s.passes,
        s.saved,
        s.unchanged,
        s.skipped,
        s.failed,
    )
    if not saved:
        raise UserDataError(
            ExitCode.SAVE_FAILED,
            f"{syncer.last_failure} Changes since the last save are lost with the pod.",
        )
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m cxg_on_k8s.userdata`` and the typer CLI; returns the exit code."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage or help
        return int(exc.code or 0)
    termination_log = args.termination_log or _default_termination_log()
    try:
        return int(_run(args, termination_log))
    except UserDataError as exc:
        log.error("%s", exc.message)
        write_termination_log(termination_log, exc.message)
        return int(exc.code)
    except Exception as exc:  # the pod must still say why it failed
        log.exception("unexpected failure")
        message = f"userdata {args.command}: unexpected error {exc!r}. Fix: see the container log."
        write_termination_log(termination_log, message)
        return int(ExitCode.UNEXPECTED)
