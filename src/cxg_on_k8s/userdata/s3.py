"""A typo in an S3 URL must fail in a second with the option to fix, not after a download or in
S3's words. So the URLs are checked here, before anything is downloaded; and here is the one
client, which fails fast and leaves retrying to the retry policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeAlias

import boto3
from botocore.config import Config

from cxg_on_k8s.userdata.errors import ExitCode, UserDataError

S3Client: TypeAlias = Any  # botocore builds the client class at run time

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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
        raise UserDataError(ExitCode.USAGE, f"{what} {url!r}: not an S3 URL. Fix: write it as s3://<bucket>/<key>.")
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


def s3_client() -> S3Client:
    """An S3 client from the standard AWS_* variables.

    botocore's own retries are off so that each attempt is counted and logged by
    ``retry.retrying``; the short connect timeout reports an unreachable endpoint in seconds, not
    minutes.
    """
    config = Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    return boto3.session.Session().client("s3", config=config)
