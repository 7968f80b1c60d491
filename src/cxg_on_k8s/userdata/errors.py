"""A failed data container must say why in one line (object, cause, fix) and with an exit code the
operator may key on. The wording lives here alone, so that S3's many error codes read the same
whichever call met them, and so that the termination log, which Kubernetes copies into the
container status, gets that line whether ``fetch``, ``sync`` or the command line hit the failure.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING

import botocore.exceptions

if TYPE_CHECKING:
    from cxg_on_k8s.userdata.s3 import S3Url

log = logging.getLogger("cxg_on_k8s.userdata")

# Kubernetes keeps at most this much of a termination message.
TERMINATION_LOG_MAX = 4096

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
    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the pod's AWS secret) and that they grant s3:{action} on it"
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


def explain_s3_error(exc: Exception, *, what: str, url: S3Url, endpoint: str, action: str) -> UserDataError:
    """Turn a botocore exception into one line: which object, what happened, what to do."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "?"))
        detail = error.get("Message") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
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
                f"{what} {url}: access denied ({code}: {detail}). Fix: " + _CREDENTIALS_FIX.format(action=action) + ".",
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
    return UserDataError(ExitCode.UNEXPECTED, f"{what} {url}: unexpected S3 error {exc!r}. Fix: see the pod's log.")


@contextlib.contextmanager
def s3_errors(*, what: str, url: S3Url, endpoint: str, action: str) -> Iterator[None]:
    """Re-raise botocore's exceptions as ``explain_s3_error``'s one line, so that every S3 call
    reports object, cause and fix the same way (and the retry policy sees which ones are transient)."""
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise explain_s3_error(exc, what=what, url=url, endpoint=endpoint, action=action) from exc


def write_termination_log(path: Path | None, message: str) -> None:
    """Kubernetes copies this file into the container status, whence the operator reports it."""
    if path is None:
        return
    try:
        path.write_text(message[: TERMINATION_LOG_MAX - 1] + "\n" if message else "")
    except OSError as exc:
        log.warning("cannot write the termination log %s: %s", path, exc)
