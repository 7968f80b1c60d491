"""The save sidecar's job: nothing the user makes in cellxgene may be lost, not even the last
change before the pod stops, and no failed or half-written save may replace the last good copy.
So changed files are saved while the viewer runs and once more on stop, each first to history.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cxg_on_k8s.userdata.errors import UserDataError, s3_errors, write_termination_log
from cxg_on_k8s.userdata.retry import DEFAULT_BACKOFF, DEFAULT_RETRIES, retrying
from cxg_on_k8s.userdata.s3 import S3Client, S3Url
from cxg_on_k8s.userdata.state import USER_FILES, load_state, save_state, sha256

log = logging.getLogger("cxg_on_k8s.userdata")

HISTORY_DIR = "history/"
# cellxgene writes a few KB at a time; half a second between two agreeing reads is ample.
DEFAULT_SETTLE = 0.5


def utc_stamp(now: datetime | None = None) -> str:
    """History folder name: sorts by time, unique per save, no characters that need escaping."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")


def read_stable(
    path: Path,
    *,
    settle: float,
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> bytes | None:
    """The file's content once two reads ``settle`` seconds apart agree; None if absent or busy.

    cellxgene rewrites its CSV files in place (it moves the old one to a backup folder, then
    truncates and writes), so a single read may catch it half-way. ``sleep`` is injectable so
    that tests can change the file between reads deterministically.
    """
    try:
        previous = path.read_bytes()
        for _ in range(attempts):
            sleep(settle)
            current = path.read_bytes()
            if current == previous:
                return current
            previous = current
    except FileNotFoundError:
        return None
    log.warning("%s kept changing for %d reads; it is saved on a later pass", path, attempts)
    return None


@dataclass
class SyncStats:
    """Counters for the log and the exit summary: failures are never silent."""

    passes: int = 0
    saved: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0


class Syncer:
    """Saves the user files of one directory to one S3 prefix, only when their content changed."""

    def __init__(
        self,
        client: S3Client,
        prefix: S3Url,
        src: Path,
        *,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        settle: float = DEFAULT_SETTLE,
        termination_log: Path | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.src = src
        self.retries = retries
        self.backoff = backoff
        self.settle = settle
        self.termination_log = termination_log
        self.state = load_state(src)
        self.stats = SyncStats()
        self.last_failure: str | None = None

    def _put(self, url: S3Url, data: bytes) -> None:
        endpoint = self.client.meta.endpoint_url
        with s3_errors(what="user data", url=url, endpoint=endpoint, action="PutObject"):
            self.client.put_object(Bucket=url.bucket, Key=url.key, Body=data)

    def _changed(self) -> list[tuple[str, bytes]]:
        """User files whose stable, non-empty content differs from what S3 holds."""
        changed = []
        for name in USER_FILES:
            data = read_stable(self.src / name, settle=self.settle)
            if data is None:
                continue
            if not data:
                # An empty file is what a half-done write looks like; never let it replace the
                # last good copy (cellxgene also writes one when every category was deleted).
                log.warning("%s is empty; not saved, the last saved copy stays", self.src / name)
                self.stats.skipped += 1
            elif sha256(data) == self.state.get(name):
                self.stats.unchanged += 1
            else:
                changed.append((name, data))
        return changed

    def save_changed(self, *, stop: threading.Event | None = None) -> bool:
        """One pass: save every changed file, history copy first. True if nothing failed.

        With ``stop`` given, a stop request cuts retries short (the final pass follows).
        """
        self.stats.passes += 1
        changed = self._changed()
        stamp = utc_stamp()
        ok = True
        for name, data in changed:
            history = self.prefix.join(f"{HISTORY_DIR}{stamp}/{name}")
            current = self.prefix.join(name)

            def attempt(history: S3Url = history, current: S3Url = current, data: bytes = data) -> None:
                self._put(history, data)
                self._put(current, data)

            try:
                retrying(
                    attempt,
                    describe=f"save of {name} to {current}",
                    retries=self.retries,
                    backoff=self.backoff,
                    interrupt=stop,
                )
            except UserDataError as exc:
                ok = False
                self.stats.failed += 1
                self.last_failure = f"{name} not saved: {exc.message}"
                log.error(
                    "%s The last saved copy is unchanged; the next pass retries. [%d failed saves so far]",
                    self.last_failure,
                    self.stats.failed,
                )
                write_termination_log(self.termination_log, self.last_failure)
                continue
            self.state[name] = sha256(data)
            save_state(self.src, self.state)
            self.stats.saved += 1
            log.info("saved %s to %s (history %s, %d bytes)", name, current, history, len(data))
        if ok and self.last_failure is not None:
            # A later success supersedes the reported failure: clear it from the container status.
            write_termination_log(self.termination_log, "")
            self.last_failure = None
        return ok

    def run(self, interval: float, stop: threading.Event) -> bool:
        """Save at once, then every ``interval`` seconds, then once more when ``stop`` is set.

        Returns whether the final save succeeded: that one decides whether work was lost.
        """
        self.save_changed(stop=stop)
        while not stop.wait(interval):
            self.save_changed(stop=stop)
        log.info("stop requested: saving once more")
        return self.save_changed()
