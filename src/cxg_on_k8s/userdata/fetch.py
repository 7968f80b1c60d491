"""cellxgene must start on a complete, valid dataset and on the user's last saved files, and a
pod restart must not overwrite changes that were not saved yet: the init container's job.
A dataset too large for the pod fails before it fills the volume.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

import botocore.exceptions

from cxg_on_k8s.userdata.errors import ExitCode, UserDataError, s3_errors
from cxg_on_k8s.userdata.h5ad import check_h5ad
from cxg_on_k8s.userdata.retry import DEFAULT_BACKOFF, DEFAULT_RETRIES, retrying
from cxg_on_k8s.userdata.s3 import S3Client, S3Url, parse_s3_url, s3_client
from cxg_on_k8s.userdata.state import USER_FILES, load_state, save_state, sha256, write_atomically

log = logging.getLogger("cxg_on_k8s.userdata")

DATASET_FILE = "dataset.h5ad"


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
    with s3_errors(what="dataset", url=url, endpoint=endpoint, action="GetObject"):
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
                f"dataset {url}: the server failed (HTTP {exc.code}). Fix: retry later or check the server.",
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
            f"dataset {url}: cannot download ({reason}). Fix: check the host name and that the pod can reach it.",
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
        retrying(download, describe=f"download of {source}", retries=retries, backoff=backoff)
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
    with s3_errors(what="user data", url=url, endpoint=endpoint, action="GetObject"):
        try:
            data: bytes = client.get_object(Bucket=url.bucket, Key=url.key)["Body"].read()
        except botocore.exceptions.ClientError as exc:
            # Not every not-found code: a missing bucket is a wrong URL, not a first visit.
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
            log.warning("keeping the local %s: it has changes not saved yet; sync will save them", local)
            result.kept_local.append(name)
            continue
        url = user_data.join(name)
        data = retrying(
            partial(_get_user_file, client, url),
            describe=f"download of {url}",
            retries=retries,
            backoff=backoff,
        )
        if data is None:
            log.info("no saved %s at %s: first visit, cellxgene starts without one", name, url)
            local.unlink(missing_ok=True)
            state.pop(name, None)
        else:
            write_atomically(local, data)
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
