"""The user's data: the dataset and the user's annotations, fetched before cellxgene starts and
saved back while it runs, so that nothing the user made is lost.

One code path serves the pod and the tests::

    python -m cxg_on_k8s.userdata fetch --dataset s3://b/k.h5ad --user-data s3://b/p/ --dest /data
    python -m cxg_on_k8s.userdata sync --user-data s3://b/p/ --src /data --interval 120

``fetch`` is the pod's init container. ``sync`` runs beside cellxgene (best as a native sidecar,
which Kubernetes stops only after cellxgene has exited) and saves once more when it gets SIGTERM.
boto3 takes the credentials and the endpoint from the standard variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL).

A failure ends with one line that names the object, the cause and the fix, on stderr and in the
termination log, which Kubernetes copies into the container status for the operator to show.

Saving is keep-previous: every changed file goes first to ``<prefix>history/<UTC time>/<file>``,
then over ``<prefix><file>`` (one S3 PUT is atomic), so a failed save never touches the last
good copy. ``<dir>/.userdata-state.json`` records the hash of what S3 holds, so that a restarted
``sync`` still saves changes made before the restart and a re-run ``fetch`` never overwrites
local changes that were not saved yet.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import signal
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, TypeAlias, TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config
from kubernetes.utils import parse_quantity

from cxg_on_k8s.settings import Settings

log = logging.getLogger("cxg_on_k8s.userdata")

S3Client: TypeAlias = Any  # botocore builds the client class at run time
T = TypeVar("T")

DATASET_FILE = "dataset.h5ad"
USER_FILES = ("annotations.csv", "gene_sets.csv")
HISTORY_DIR = "history/"
STATE_FILE = ".userdata-state.json"
TERMINATION_LOG = "/dev/termination-log"
# Kubernetes keeps at most this much of a termination message.
TERMINATION_LOG_MAX = 4096
# Bounded retries: 1+2+4+8 s of back-off at most, well inside the pod's termination grace period.
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 1.0
# cellxgene writes a few KB at a time; half a second between two agreeing reads is ample.
DEFAULT_SETTLE = 0.5

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# HDF5 allows a user block before the superblock, of 512 bytes or a larger power of two.
_USER_BLOCK_MIN = 512
_UNDEFINED_ADDRESS = 0xFFFFFFFFFFFFFFFF

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED_CODES = {
    "403",
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "Throttling",
}

_CREDENTIALS_FIX = (
    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the pod's AWS secret) and that they "
    "grant s3:{action} on it"
)


class ExitCode(IntEnum):
    """The process's exit status; the operator may key on it, people read the message."""

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    NOT_FOUND = 3
    ACCESS_DENIED = 4
    UNREACHABLE = 5
    CORRUPT = 6
    SAVE_FAILED = 7
    TOO_LARGE = 8


class UserDataError(Exception):
    """A failure with its exit code and the one line a user reads: object, cause and fix."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying: the store may answer next time (unlike a missing object or a bad key)."""
        return self.code is ExitCode.UNREACHABLE


@dataclass(frozen=True)
class S3Url:
    """A bucket and a key (an object) or a key prefix ending in "/" (a folder)."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, name: str) -> S3Url:
        """The object ``name`` inside this prefix."""
        return S3Url(self.bucket, self.key + name)


def parse_s3_url(url: str, *, what: str, prefix: bool = False) -> S3Url:
    """Split ``s3://bucket/key``; ``prefix=True`` reads it as a folder (a trailing "/" is added).

    ``what`` names the input in the error (e.g. "--dataset"), so the message says what to fix.
    """
    match = re.fullmatch(r"s3://([^/]*)(?:/(.*))?", url)
    if match is None:
        raise UserDataError(
            ExitCode.USAGE, f"{what} {url!r}: not an S3 URL. Fix: write it as s3://<bucket>/<key>."
        )
    bucket, key = match.group(1), match.group(2) or ""
    if not _BUCKET.match(bucket):
        raise UserDataError(
            ExitCode.USAGE,
            f"{what} {url!r}: {bucket!r} is not a valid bucket name. Fix: use 3-63 lower-case "
            "letters, digits, dots or hyphens, starting and ending with a letter or digit.",
        )
    if prefix:
        return S3Url(bucket, key if key == "" or key.endswith("/") else key + "/")
    if key == "" or key.endswith("/"):
        raise UserDataError(
            ExitCode.USAGE,
            f"{what} {url!r}: names a folder, not an object. Fix: give the full key of the file, "
            "e.g. s3://bucket/path/data.h5ad.",
        )
    return S3Url(bucket, key)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_stamp(now: datetime | None = None) -> str:
    """History folder name: sorts by time, unique per save, no characters that need escaping."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")


# --- HDF5 validation ------------------------------------------------------------------------


def _hdf5_end(superblock: bytes) -> int | None:
    """File size the HDF5 superblock records (its absolute end-of-file address); None if unknown.

    Layouts from the HDF5 file format specification, section II.A: versions 0 and 1 keep the
    address after 16 (v0) or 20 (v1) bytes of fixed fields plus base and free-space addresses;
    versions 2 and 3 after 4 bytes plus base and extension addresses. libhdf5 refuses a file
    shorter than this ("truncated file"), and so does this check.
    """
    if len(superblock) < 13:
        return None
    version = superblock[8]
    if version in (0, 1):
        size_of_offsets = superblock[13]
        start = (24 if version == 0 else 28) + 2 * size_of_offsets
    elif version in (2, 3):
        size_of_offsets = superblock[9]
        start = 12 + 2 * size_of_offsets
    else:
        return None
    formats = {2: "<H", 4: "<I", 8: "<Q"}
    if size_of_offsets not in formats or len(superblock) < start + size_of_offsets:
        return None
    (end,) = struct.unpack_from(formats[size_of_offsets], superblock, start)
    undefined = _UNDEFINED_ADDRESS >> (64 - 8 * size_of_offsets)
    return None if end == undefined else end


def check_h5ad(path: Path, *, source: str) -> None:
    """Raise CORRUPT unless ``path`` is a complete HDF5 file, as every .h5ad is.

    Checks the signature (at 0, 512, 1024, ... since HDF5 allows a user block) and that the file
    is as long as its superblock says, which catches a truncated upload without needing h5py.
    """
    size = path.stat().st_size
    fix = "Fix: upload the .h5ad again (written by anndata's write_h5ad) or correct spec.dataset."
    if size == 0:
        raise UserDataError(ExitCode.CORRUPT, f"dataset {source}: the file is empty. {fix}")
    with path.open("rb") as f:
        head = f.read(len(HDF5_SIGNATURE))
        offset = 0
        while offset < size:
            f.seek(offset)
            superblock = f.read(64)
            if superblock.startswith(HDF5_SIGNATURE):
                end = _hdf5_end(superblock)
                if end is not None and end > size:
                    raise UserDataError(
                        ExitCode.CORRUPT,
                        f"dataset {source}: truncated .h5ad ({size} bytes, its HDF5 superblock "
                        f"says {end}). {fix}",
                    )
                return
            offset = _USER_BLOCK_MIN if offset == 0 else offset * 2
    raise UserDataError(
        ExitCode.CORRUPT,
        f"dataset {source}: not an .h5ad (no HDF5 signature; the file starts with {head!r}). {fix}",
    )


# --- S3 access and its errors ---------------------------------------------------------------


def s3_client() -> S3Client:
    """An S3 client from the standard AWS_* variables.

    botocore's own retries are off so that each attempt is counted and logged by ``_retrying``;
    the short connect timeout reports an unreachable endpoint in seconds, not minutes.
    """
    config = Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    return boto3.session.Session().client("s3", config=config)


def explain_s3_error(
    exc: Exception, *, what: str, url: S3Url, endpoint: str, action: str
) -> UserDataError:
    """Turn a botocore exception into one line: which object, what happened, what to do."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "?"))
        detail = error.get("Message") or exc.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode", ""
        )
        if code == "NoSuchBucket":
            return UserDataError(
                ExitCode.NOT_FOUND,
                f"{what} {url}: bucket {url.bucket!r} does not exist at {endpoint} ({code}). "
                "Fix: create the bucket or correct the URL (and AWS_ENDPOINT_URL).",
            )
        if code in _NOT_FOUND_CODES:
            return UserDataError(
                ExitCode.NOT_FOUND,
                f"{what} {url}: no such object at {endpoint} ({code}). Fix: upload it or correct "
                "the URL (keys are case-sensitive).",
            )
        if code in _DENIED_CODES:
            return UserDataError(
                ExitCode.ACCESS_DENIED,
                f"{what} {url}: access denied ({code}: {detail}). Fix: "
                + _CREDENTIALS_FIX.format(action=action)
                + ".",
            )
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _TRANSIENT_CODES or status >= 500:
            return UserDataError(
                ExitCode.UNREACHABLE,
                f"{what} {url}: the store at {endpoint} failed ({code}: {detail}). Fix: retry "
                "later; check the object store's health if it persists.",
            )
        return UserDataError(
            ExitCode.UNEXPECTED,
            f"{what} {url}: S3 refused s3:{action} ({code}: {detail}). Fix: check the URL and "
            "the bucket's configuration.",
        )
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return UserDataError(
            ExitCode.ACCESS_DENIED,
            f"{what} {url}: no S3 credentials. Fix: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (from the pod's AWS secret).",
        )
    if isinstance(
        exc,
        (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            botocore.exceptions.IncompleteReadError,
        ),
    ):
        return UserDataError(
            ExitCode.UNREACHABLE,
            f"{what} {url}: cannot reach the S3 endpoint {endpoint} ({exc}). Fix: check "
            "AWS_ENDPOINT_URL and that the object store is up and reachable from the pod.",
        )
    return UserDataError(
        ExitCode.UNEXPECTED, f"{what} {url}: unexpected S3 error {exc!r}. Fix: see the pod's log."
    )


@contextlib.contextmanager
def _s3_errors(*, what: str, url: S3Url, endpoint: str, action: str) -> Iterator[None]:
    """Re-raise botocore's exceptions as ``explain_s3_error``'s one line, so that every S3 call
    reports object, cause and fix the same way (and ``_retrying`` sees which ones are transient)."""
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise explain_s3_error(exc, what=what, url=url, endpoint=endpoint, action=action) from exc


def _retrying(
    attempt: Callable[[], T],
    *,
    describe: str,
    retries: int,
    backoff: float,
    wait: Callable[[float], bool],
) -> T:
    """Run ``attempt``; retry transient failures ``retries`` times, doubling the delay (max 30 s).

    ``wait(seconds)`` sleeps between tries and returns True to give up early (a stop request
    during a periodic save: the final save retries in full instead).
    """
    for number in range(1, retries + 2):
        try:
            return attempt()
        except UserDataError as exc:
            if not exc.transient or number > retries:
                raise
            delay = min(backoff * 2 ** (number - 1), 30.0)
            log.warning(
                "%s failed (attempt %d of %d), retrying in %.1f s: %s",
                describe,
                number,
                retries + 1,
                delay,
                exc.message,
            )
            if wait(delay):
                raise
    raise AssertionError("unreachable: the loop returns or raises")


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


# --- local state ----------------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes) -> None:
    """Write whole or not at all: readers (cellxgene, sync) never see a partial file."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_state(directory: Path) -> dict[str, str]:
    """Hashes of the user files as last fetched from or saved to S3 (empty if none recorded)."""
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        state = None
    if not isinstance(state, dict):
        log.warning(
            "%s is not a JSON object; every present user file counts as unsaved", STATE_FILE
        )
        return {}
    return {k: v for k, v in state.items() if k in USER_FILES and isinstance(v, str)}


def save_state(directory: Path, state: dict[str, str]) -> None:
    _write_atomically(directory / STATE_FILE, json.dumps(state, sort_keys=True).encode())


# --- fetch ----------------------------------------------------------------------------------


@dataclass
class FetchResult:
    """Which user files ``fetch`` restored from S3 and which it kept because they were unsaved."""

    restored: list[str] = field(default_factory=list)
    kept_local: list[str] = field(default_factory=list)


def _too_large(source: str, size: int, max_bytes: int) -> UserDataError:
    return UserDataError(
        ExitCode.TOO_LARGE,
        f"dataset {source}: {size} bytes or more, over the maximum {max_bytes} (setting "
        "CXG_MAX_DATASET_SIZE). Fix: open a smaller dataset, or raise the setting (and "
        "CXG_DATA_VOLUME_LIMIT with it).",
    )


def _copy_capped(chunks: Iterator[bytes], out: BinaryIO, source: str, max_bytes: int | None) -> None:
    """Write ``chunks`` to ``out``, stopping once more than ``max_bytes`` arrived: a server may
    send more than its Content-Length said, or none at all."""
    written = 0
    for chunk in chunks:
        written += len(chunk)
        if max_bytes is not None and written > max_bytes:
            raise _too_large(source, written, max_bytes)
        out.write(chunk)


def _download_s3(client: S3Client, url: S3Url, tmp: Path, max_bytes: int | None = None) -> None:
    endpoint = client.meta.endpoint_url
    with _s3_errors(what="dataset", url=url, endpoint=endpoint, action="GetObject"):
        response = client.get_object(Bucket=url.bucket, Key=url.key)
        size = int(response.get("ContentLength") or 0)
        if max_bytes is not None and size > max_bytes:
            raise _too_large(str(url), size, max_bytes)
        with tmp.open("wb") as out:
            _copy_capped(response["Body"].iter_chunks(1 << 20), out, str(url), max_bytes)


def _download_http(url: str, tmp: Path, max_bytes: int | None = None) -> None:
    fix_access = "Fix: make the URL readable without sign-in, or copy the file to S3."
    try:
        with urllib.request.urlopen(url, timeout=30) as response, tmp.open("wb") as out:
            size = int(response.headers.get("Content-Length") or 0)
            if max_bytes is not None and size > max_bytes:
                raise _too_large(url, size, max_bytes)
            _copy_capped(iter(partial(response.read, 1 << 20), b""), out, url, max_bytes)
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            raise UserDataError(
                ExitCode.NOT_FOUND,
                f"dataset {url}: not found (HTTP {exc.code}). Fix: correct spec.dataset.",
            ) from exc
        if exc.code in (401, 403):
            raise UserDataError(
                ExitCode.ACCESS_DENIED,
                f"dataset {url}: access denied (HTTP {exc.code}). {fix_access}",
            ) from exc
        if exc.code >= 500 or exc.code == 429:
            raise UserDataError(
                ExitCode.UNREACHABLE,
                f"dataset {url}: the server failed (HTTP {exc.code}). Fix: retry later or check "
                "the server.",
            ) from exc
        raise UserDataError(
            ExitCode.UNEXPECTED,
            f"dataset {url}: the server refused the download (HTTP {exc.code}). Fix: check "
            "that the URL is a plain file download.",
        ) from exc
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserDataError(
            ExitCode.UNREACHABLE,
            f"dataset {url}: cannot download ({reason}). Fix: check the host name and that "
            "the pod can reach it.",
        ) from exc


def fetch_dataset(
    client: S3Client,
    dataset: S3Url | str,
    dest: Path,
    *,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    max_bytes: int | None = None,
) -> Path:
    """Download the dataset to ``dest/dataset.h5ad``: to a temporary name, checked, then renamed.

    cellxgene therefore only ever sees a complete, valid file; a failed, corrupt or too large
    (over ``max_bytes``) download leaves nothing under the final name. ``dataset`` is as
    ``_parse_dataset`` returns it.
    """
    final = dest / DATASET_FILE
    tmp = dest / f".{DATASET_FILE}.part"
    source = str(dataset)
    download: Callable[[], None]
    if isinstance(dataset, S3Url):
        download = partial(_download_s3, client, dataset, tmp, max_bytes)
    else:
        download = partial(_download_http, dataset, tmp, max_bytes)
    started = time.monotonic()
    try:
        _retrying(
            download,
            describe=f"download of {source}",
            retries=retries,
            backoff=backoff,
            wait=_sleep,
        )
        check_h5ad(tmp, source=source)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    log.info(
        "fetched dataset %s to %s (%d bytes in %.2f s)",
        source,
        final,
        final.stat().st_size,
        time.monotonic() - started,
    )
    return final


def _get_user_file(client: S3Client, url: S3Url) -> bytes | None:
    """The object's bytes, or None if there is none (the user's first visit)."""
    endpoint = client.meta.endpoint_url
    with _s3_errors(what="user data", url=url, endpoint=endpoint, action="GetObject"):
        try:
            data: bytes = client.get_object(Bucket=url.bucket, Key=url.key)["Body"].read()
        except botocore.exceptions.ClientError as exc:
            # Not _NOT_FOUND_CODES: a missing bucket is a wrong URL, not a first visit.
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return data


def fetch_user_files(
    client: S3Client,
    user_data: S3Url,
    dest: Path,
    result: FetchResult,
    *,
    retries: int,
    backoff: float,
) -> None:
    """Restore the user's saved files; keep a local file that has changes not yet saved.

    A local file differing from what S3 last held (per the state file) exists only when the pod
    was restarted after cellxgene wrote it and before sync saved it: it is newer than S3's.
    """
    state = load_state(dest)
    for name in USER_FILES:
        local = dest / name
        if local.exists() and sha256(local.read_bytes()) != state.get(name):
            log.warning(
                "keeping the local %s: it has changes not saved yet; sync will save them", local
            )
            result.kept_local.append(name)
            continue
        url = user_data.join(name)
        data = _retrying(
            partial(_get_user_file, client, url),
            describe=f"download of {url}",
            retries=retries,
            backoff=backoff,
            wait=_sleep,
        )
        if data is None:
            log.info("no saved %s at %s: first visit, cellxgene starts without one", name, url)
            local.unlink(missing_ok=True)
            state.pop(name, None)
        else:
            _write_atomically(local, data)
            state[name] = sha256(data)
            log.info("restored %s from %s (%d bytes)", name, url, len(data))
            result.restored.append(name)
    save_state(dest, state)


def _parse_dataset(dataset: str) -> S3Url | str:
    """An S3 dataset URL checked and split; an http(s) URL as is (its server judges it)."""
    if dataset.startswith(("https://", "http://")):
        return dataset
    return parse_s3_url(dataset, what="--dataset")


def fetch(
    dataset: str,
    user_data: str,
    dest: Path,
    *,
    client: S3Client | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    max_bytes: int | None = None,
    legacy_user_data: str | None = None,
) -> FetchResult:
    """Put the dataset and the user's saved files into ``dest``, ready for cellxgene.

    Both URLs are checked before anything is downloaded; user files come first because they are
    small, so bad credentials are reported before a long dataset download. When the user-data
    prefix holds nothing yet and ``legacy_user_data`` is given (where earlier versions saved by
    default), the files are restored from there once; the save sidecar writes them to the new
    prefix, so nothing saved before is lost.
    """
    prefix = parse_s3_url(user_data, what="--user-data", prefix=True)
    legacy = parse_s3_url(legacy_user_data, what="--legacy-user-data", prefix=True) if legacy_user_data else None
    source = _parse_dataset(dataset)
    client = client or s3_client()
    dest.mkdir(parents=True, exist_ok=True)
    result = FetchResult()
    fetch_user_files(client, prefix, dest, result, retries=retries, backoff=backoff)
    if legacy is not None and legacy != prefix and not result.restored and not result.kept_local:
        fetch_user_files(client, legacy, dest, result, retries=retries, backoff=backoff)
        if result.restored:
            log.info("restored %s from the earlier default place %s; saves go to %s", result.restored, legacy, prefix)
            # The state file now says "as saved" for files the new prefix lacks: forget it, so the
            # save sidecar writes them to the new prefix at its first pass.
            save_state(dest, {})
    fetch_dataset(client, source, dest, retries=retries, backoff=backoff, max_bytes=max_bytes)
    return result


# --- sync -----------------------------------------------------------------------------------


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
        with _s3_errors(what="user data", url=url, endpoint=endpoint, action="PutObject"):
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
        wait = stop.wait if stop is not None else _sleep
        ok = True
        for name, data in changed:
            history = self.prefix.join(f"{HISTORY_DIR}{stamp}/{name}")
            current = self.prefix.join(name)

            def attempt(
                history: S3Url = history, current: S3Url = current, data: bytes = data
            ) -> None:
                self._put(history, data)
                self._put(current, data)

            try:
                _retrying(
                    attempt,
                    describe=f"save of {name} to {current}",
                    retries=self.retries,
                    backoff=self.backoff,
                    wait=wait,
                )
            except UserDataError as exc:
                ok = False
                self.stats.failed += 1
                self.last_failure = f"{name} not saved: {exc.message}"
                log.error(
                    "%s The last saved copy is unchanged; the next pass retries. "
                    "[%d failed saves so far]",
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


# --- command line ---------------------------------------------------------------------------


def write_termination_log(path: Path | None, message: str) -> None:
    """Kubernetes copies this file into the container status, whence the operator reports it."""
    if path is None:
        return
    try:
        path.write_text(message[: TERMINATION_LOG_MAX - 1] + "\n" if message else "")
    except OSError as exc:
        log.warning("cannot write the termination log %s: %s", path, exc)


def _default_termination_log() -> Path | None:
    path = Path(TERMINATION_LOG)
    return path if os.access(path, os.W_OK) else None


def build_parser() -> argparse.ArgumentParser:
    default_interval = Settings.model_fields["save_interval"].default
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
        help="Retries of a failed transfer while the store is unreachable or failing "
        f"(default {DEFAULT_RETRIES}).",
    )
    common.add_argument(
        "--backoff",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_BACKOFF,
        help="Seconds before the first retry; doubled each time, at most 30 "
        f"(default {DEFAULT_BACKOFF}).",
    )
    parser = argparse.ArgumentParser(
        prog="python -m cxg_on_k8s.userdata",
        description="Fetch a cellxgene dataset and the user's annotations from S3, and save "
        "them back.",
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
    sync_cmd.add_argument(
        "--user-data", metavar="URL", required=True, help="s3://bucket/prefix/ to save to."
    )
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
        default=float(default_interval),
        help=f"Seconds between saves (default {default_interval}; the operator passes its "
        "save_interval setting).",
    )
    sync_cmd.add_argument(
        "--settle",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_SETTLE,
        help="Seconds between the two reads that must agree before a file is saved "
        f"(default {DEFAULT_SETTLE}).",
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
            max_bytes=int(parse_quantity(args.max_size)) if args.max_size else None,
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
    log.info(
        "saving %s/{%s} to %s every %.0f s", args.src, ",".join(USER_FILES), prefix, args.interval
    )
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


if __name__ == "__main__":
    sys.exit(main())
