"""The user's data: dataset and annotations from S3, saved back, nothing lost (issue 6).

Every S3 call goes to moto's real S3 server with credentials enforced; the commands run as the
pod runs them (``python -m cxg_on_k8s.userdata``, real processes, real SIGTERM). The tests that
use cellxgene 1.3.0 itself are marked ``slow`` by tests/fixtures_s3.py and never skipped.
"""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cxg_on_k8s.api.model import SingleUserInstanceSpec
from cxg_on_k8s.render import viewer
from cxg_on_k8s.settings import Settings
from cxg_on_k8s.userdata.errors import ExitCode, UserDataError
from cxg_on_k8s.userdata.fetch import fetch
from cxg_on_k8s.userdata.h5ad import HDF5_SIGNATURE, check_h5ad
from cxg_on_k8s.userdata.s3 import S3Url, parse_s3_url
from cxg_on_k8s.userdata.sync import Syncer, read_stable

pytest.register_assert_rewrite(
    "tests.fixtures_s3"
)  # before its import: its asserts explain failures

from tests.fixtures_s3 import MotoS3, Relay, free_port, run_cellxgene, wait_until
from tests.pki import TestCA, https_file_server

pytest_plugins = ["tests.fixtures_s3"]

HISTORY_KEY = re.compile(r"history/\d{8}T\d{6}\.\d{6}Z/(annotations|gene_sets)\.csv$")


# --- helpers --------------------------------------------------------------------------------


def hdf5_header(size: int, *, version: int = 0, user_block: int = 0) -> bytes:
    """The first bytes of an HDF5 file of ``size`` bytes, padded to ``size``.

    Enough for the signature and superblock checks; not an .h5ad cellxgene could open (the
    cellxgene tests use real ones from scripts/make_h5ad.py).
    """
    undefined = struct.pack("<Q", 2**64 - 1)
    if version == 0:
        fixed = bytes([0, 0, 0, 0, 0, 8, 8, 0]) + struct.pack("<HHI", 4, 16, 0)
        superblock = fixed + struct.pack("<Q", user_block) + undefined + struct.pack("<Q", size)
    else:
        fixed = bytes([version, 8, 8, 0])
        superblock = fixed + struct.pack("<Q", user_block) + undefined + struct.pack("<Q", size)
    head = b"\0" * user_block + HDF5_SIGNATURE + superblock
    return head + b"\0" * (size - len(head))


def run_userdata(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cxg_on_k8s.userdata", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def s3_text(client: Any, bucket: str, key: str) -> str | None:
    try:
        return str(client.get_object(Bucket=bucket, Key=key)["Body"].read().decode())
    except client.exceptions.NoSuchKey:
        return None


def history_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}history/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


class SyncProcess:
    """``userdata sync`` running in the background, its log readable while it runs."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cxg_on_k8s.userdata", "sync", *args],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as the kubelet sends it, and the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@contextmanager
def running_sync(
    prefix: str, src: Path, env: dict[str, str], *extra: str, log_path: Path
) -> Iterator[SyncProcess]:
    sync = SyncProcess(
        ["--user-data", prefix, "--src", str(src), "--settle", "0.05", *extra], env, log_path
    )
    try:
        wait_until(lambda: "every" in sync.log(), timeout=60, what="sync to start")
        yield sync
    finally:
        if sync.process.poll() is None:
            sync.process.kill()
            sync.process.wait()


@pytest.fixture
def s3(moto_s3: MotoS3) -> Any:
    return moto_s3.client()


# --- pure helpers ---------------------------------------------------------------------------


def test_s3_urls_split_into_bucket_and_key() -> None:
    assert parse_s3_url("s3://data-bucket/a/b.h5ad", what="--dataset") == S3Url(
        "data-bucket", "a/b.h5ad"
    )
    assert parse_s3_url("s3://data-bucket/u/d", what="--user-data", prefix=True).key == "u/d/"
    assert parse_s3_url("s3://data-bucket/u/d/", what="--user-data", prefix=True).key == "u/d/"
    assert parse_s3_url("s3://data-bucket", what="--user-data", prefix=True).key == ""


@pytest.mark.parametrize(
    ("url", "prefix", "says"),
    [
        ("https://x/y.h5ad", False, "not an S3 URL"),
        ("s3://Bad_Bucket/k.h5ad", False, "not a valid bucket name"),
        ("s3://bucket/folder/", False, "names a folder"),
        ("s3://ab/k", True, "not a valid bucket name"),
    ],
)
def test_bad_s3_urls_name_the_option_and_the_fix(url: str, prefix: bool, says: str) -> None:
    with pytest.raises(UserDataError) as err:
        parse_s3_url(url, what="--dataset", prefix=prefix)
    assert err.value.code is ExitCode.USAGE
    assert (
        says in err.value.message
        and "--dataset" in err.value.message
        and "Fix:" in err.value.message
    )


@given(
    bucket=st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True),
    key=st.from_regex(r"[A-Za-z0-9_.@-]{1,10}(/[A-Za-z0-9_.@-]{1,10}){0,3}", fullmatch=True),
)
def test_s3_urls_round_trip(bucket: str, key: str) -> None:
    url = f"s3://{bucket}/{key}"
    assert str(parse_s3_url(url, what="x")) == url
    assert str(parse_s3_url(url, what="x", prefix=True)) == url + "/"


@pytest.mark.parametrize(("version", "user_block"), [(0, 0), (0, 512), (2, 0), (3, 2048)])
def test_complete_hdf5_files_pass_with_or_without_user_block(
    tmp_path: Path, version: int, user_block: int
) -> None:
    path = tmp_path / "d.h5ad"
    path.write_bytes(hdf5_header(4096, version=version, user_block=user_block))
    check_h5ad(path, source="s3://b/d.h5ad")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "the file is empty"),
        (b"index,cell_type\ncell_0,B\n", "not an .h5ad (no HDF5 signature"),
        (hdf5_header(4096)[:3000], "truncated .h5ad (3000 bytes, its HDF5 superblock says 4096)"),
        (hdf5_header(4096, version=2, user_block=512)[:4000], "truncated .h5ad"),
    ],
)
def test_corrupt_datasets_are_refused_with_the_reason(
    tmp_path: Path, content: bytes, says: str
) -> None:
    path = tmp_path / "d.h5ad"
    path.write_bytes(content)
    with pytest.raises(UserDataError) as err:
        check_h5ad(path, source="s3://b/d.h5ad")
    assert err.value.code is ExitCode.CORRUPT
    assert err.value.message.startswith("dataset s3://b/d.h5ad: ") and says in err.value.message


def test_a_file_is_read_only_once_two_reads_agree(tmp_path: Path) -> None:
    path = tmp_path / "annotations.csv"
    path.write_bytes(b"")
    writes = iter([b"cell_id,state\n", b"cell_id,state\ncell_0,tumour\n"])

    def cellxgene_still_writing(_seconds: float) -> None:
        path.write_bytes(next(writes, path.read_bytes()))

    assert (
        read_stable(path, settle=0.0, sleep=cellxgene_still_writing)
        == b"cell_id,state\ncell_0,tumour\n"
    )


def test_a_file_that_never_settles_or_is_absent_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "annotations.csv"
    assert read_stable(path, settle=0.0) is None
    path.write_bytes(b"0")

    def always_writing(_seconds: float) -> None:
        path.write_bytes(str(int(path.read_bytes()) + 1).encode())

    assert read_stable(path, settle=0.0, attempts=3, sleep=always_writing) is None


# --- fetch ----------------------------------------------------------------------------------


def test_first_visit_fetches_the_dataset_and_says_there_is_no_user_data(
    moto_s3: MotoS3, s3: Any, bucket: str, tmp_path: Path
) -> None:
    dataset = hdf5_header(100_000)
    s3.put_object(Bucket=bucket, Key="datasets/pbmc.h5ad", Body=dataset)
    dest = tmp_path / "data"

    result = run_userdata(
        "fetch", "--dataset", f"s3://{bucket}/datasets/pbmc.h5ad",
        "--user-data", f"s3://{bucket}/cxg_on_k8/alice/pbmc/", "--dest", str(dest),
        env=moto_s3.env(),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert (dest / "dataset.h5ad").read_bytes() == dataset
    assert "no saved annotations.csv" in result.stderr and "first visit" in result.stderr
    assert not (dest / "annotations.csv").exists() and not (dest / "gene_sets.csv").exists()
    assert sorted(p.name for p in dest.iterdir()) == [".userdata-state.json", "dataset.h5ad"]


def test_a_dataset_over_https_is_fetched_with_its_certificate_checked(
    moto_s3: MotoS3, bucket: str, tmp_path: Path
) -> None:
    """Real TLS: a server that speaks only HTTPS, with a certificate of a test CA. The fetch
    trusts it through SSL_CERT_FILE (what Python's default context, which urllib uses, reads),
    and refuses a server it cannot verify: one signed by another CA, or one whose certificate is
    for another name. A download over plain http, or one that skipped the check, fails here."""
    served = tmp_path / "www"
    served.mkdir()
    (served / "pbmc.h5ad").write_bytes(hdf5_header(50_000))
    ca = TestCA.create(tmp_path / "pki")
    stranger = TestCA.create(tmp_path / "other-pki", "cxg-untrusted-ca")
    trusting = moto_s3.env(SSL_CERT_FILE=str(ca.cert_path))

    def fetch_from(url: str, name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return run_userdata(
            "fetch", "--dataset", url, "--user-data", f"s3://{bucket}/u/", "--dest", str(tmp_path / name),
            "--termination-log", str(tmp_path / f"{name}.term"), "--retries", "0", env=env,
        )  # fmt: skip

    with https_file_server(served, ca.server_context(["127.0.0.1"])) as server:
        ok = fetch_from(f"{server.url}/pbmc.h5ad", "ok", trusting)
        missing = fetch_from(f"{server.url}/gone.h5ad", "missing", trusting)
        untrusted = fetch_from(f"{server.url}/pbmc.h5ad", "untrusted", moto_s3.env(SSL_CERT_FILE=str(stranger.cert_path)))
    with https_file_server(served, ca.server_context(["cxg.localtest"], stem="other-name")) as other_name:
        mismatch = fetch_from(f"{other_name.url}/pbmc.h5ad", "mismatch", trusting)

    assert server.url.startswith("https://127.0.0.1:")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ok" / "dataset.h5ad").read_bytes() == (served / "pbmc.h5ad").read_bytes()
    # Both downloads reached the handler over TLS; the refused one never got that far.
    assert [path for path, _ in server.requests] == ["/pbmc.h5ad", "/gone.h5ad"], server.requests
    assert all(version and version.startswith("TLSv1.") for _, version in server.requests), server.requests
    assert missing.returncode == ExitCode.NOT_FOUND
    assert (tmp_path / "missing.term").read_text() == (
        f"dataset {server.url}/gone.h5ad: not found (HTTP 404). Fix: correct spec.dataset.\n"
    )
    for name, refused, why in (
        ("untrusted", untrusted, "certificate verify failed: unable to get local issuer certificate"),
        ("mismatch", mismatch, "IP address mismatch, certificate is not valid for '127.0.0.1'"),
    ):
        assert refused.returncode == ExitCode.UNREACHABLE, refused.stderr
        message = (tmp_path / f"{name}.term").read_text()
        assert "cannot download ([SSL: CERTIFICATE_VERIFY_FAILED]" in message and why in message, message
        assert not (tmp_path / name / "dataset.h5ad").exists()
    assert other_name.requests == [], "the client should have refused the handshake"


def test_missing_dataset_is_one_clear_line_in_the_termination_log(
    moto_s3: MotoS3, bucket: str, tmp_path: Path
) -> None:
    term = tmp_path / "termination-log"
    result = run_userdata(
        "fetch", "--dataset", f"s3://{bucket}/datasets/nope.h5ad", "--user-data", f"s3://{bucket}/u/",
        "--dest", str(tmp_path / "data"), "--termination-log", str(term), env=moto_s3.env(),
    )  # fmt: skip

    assert result.returncode == ExitCode.NOT_FOUND == 3
    message = term.read_text()
    assert message.count("\n") == 1
    assert message.startswith(f"dataset s3://{bucket}/datasets/nope.h5ad: no such object at ")
    assert "(NoSuchKey)" in message and "Fix: upload it or correct the URL" in message
    assert message.strip() in result.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".userdata-state.json"]


def test_missing_bucket_is_named(moto_s3: MotoS3, tmp_path: Path) -> None:
    term = tmp_path / "term"
    result = run_userdata(
        "fetch", "--dataset", "s3://no-such-bucket/d.h5ad", "--user-data", "s3://no-such-bucket/u/",
        "--dest", str(tmp_path / "data"), "--termination-log", str(term), env=moto_s3.env(),
    )  # fmt: skip
    assert result.returncode == ExitCode.NOT_FOUND
    assert "bucket 'no-such-bucket' does not exist" in term.read_text()


@pytest.mark.parametrize(
    ("credentials", "code"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0"}, "InvalidAccessKeyId"),
        ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "SignatureDoesNotMatch"),
    ],
)
def test_wrong_credentials_are_reported_as_such(
    moto_s3: MotoS3, s3: Any, bucket: str, tmp_path: Path, credentials: dict[str, str], code: str
) -> None:
    s3.put_object(Bucket=bucket, Key="d.h5ad", Body=hdf5_header(1000))
    term = tmp_path / "term"
    result = run_userdata(
        "fetch", "--dataset", f"s3://{bucket}/d.h5ad", "--user-data", f"s3://{bucket}/u/",
        "--dest", str(tmp_path / "data"), "--termination-log", str(term),
        env=moto_s3.env(**credentials),
    )  # fmt: skip

    assert result.returncode == ExitCode.ACCESS_DENIED == 4
    message = term.read_text()
    assert f"s3://{bucket}/u/annotations.csv: access denied ({code}" in message
    assert "Fix: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message
    assert "s3:GetObject" in message
    assert not (tmp_path / "data" / "dataset.h5ad").exists()


def test_unreachable_store_is_retried_then_reported(
    moto_s3: MotoS3, bucket: str, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    term = tmp_path / "term"
    result = run_userdata(
        "fetch", "--dataset", f"s3://{bucket}/d.h5ad", "--user-data", f"s3://{bucket}/u/",
        "--dest", str(tmp_path / "data"), "--termination-log", str(term),
        "--retries", "2", "--backoff", "0.05", env=moto_s3.env(endpoint=closed),
    )  # fmt: skip

    assert result.returncode == ExitCode.UNREACHABLE == 5
    assert "(attempt 1 of 3)" in result.stderr and "(attempt 2 of 3)" in result.stderr
    message = term.read_text()
    assert f"cannot reach the S3 endpoint {closed}" in message
    assert "Fix: check AWS_ENDPOINT_URL" in message


def test_corrupt_dataset_is_refused_and_not_left_behind(
    moto_s3: MotoS3, s3: Any, bucket: str, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="d.h5ad", Body=b"<html>Not Found</html>")
    term = tmp_path / "term"
    result = run_userdata(
        "fetch", "--dataset", f"s3://{bucket}/d.h5ad", "--user-data", f"s3://{bucket}/u/",
        "--dest", str(tmp_path / "data"), "--termination-log", str(term), env=moto_s3.env(),
    )  # fmt: skip

    assert result.returncode == ExitCode.CORRUPT == 6
    assert term.read_text().startswith(
        f"dataset s3://{bucket}/d.h5ad: not an .h5ad (no HDF5 signature"
    )
    assert not list((tmp_path / "data").glob("*dataset*"))


def test_bad_arguments_exit_2_without_touching_anything(moto_s3: MotoS3, tmp_path: Path) -> None:
    term = tmp_path / "term"
    result = run_userdata(
        "fetch", "--dataset", "s3://bucket/d.h5ad", "--user-data", "gs://bucket/u/",
        "--dest", str(tmp_path / "data"), "--termination-log", str(term), env=moto_s3.env(),
    )  # fmt: skip
    assert result.returncode == ExitCode.USAGE == 2
    assert (
        term.read_text()
        == "--user-data 'gs://bucket/u/': not an S3 URL. Fix: write it as s3://<bucket>/<key>.\n"
    )
    assert not (tmp_path / "data").exists()
    assert run_userdata("fetch", env=moto_s3.env()).returncode == 2


def test_refetch_keeps_local_changes_that_were_not_saved_yet(s3: Any, bucket: str, tmp_path: Path) -> None:
    """A restarted pod re-runs fetch; it must not overwrite what cellxgene wrote since the last save."""
    s3.put_object(Bucket=bucket, Key="d.h5ad", Body=hdf5_header(1000))
    s3.put_object(Bucket=bucket, Key="u/annotations.csv", Body=b"saved\n")
    s3.put_object(Bucket=bucket, Key="u/gene_sets.csv", Body=b"saved sets\n")
    dest = tmp_path / "data"
    fetch(f"s3://{bucket}/d.h5ad", f"s3://{bucket}/u/", dest, client=s3)
    (dest / "annotations.csv").write_bytes(b"newer, not saved\n")

    again = fetch(f"s3://{bucket}/d.h5ad", f"s3://{bucket}/u/", dest, client=s3)

    assert again.kept_local == ["annotations.csv"] and again.restored == ["gene_sets.csv"]
    assert (dest / "annotations.csv").read_bytes() == b"newer, not saved\n"


def test_two_owners_and_two_datasets_that_once_collided_keep_separate_data(
    moto_s3: MotoS3, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """``alice+lab`` and ``alice_lab`` (one owner prefix before), and ``projA/pbmc.h5ad`` and
    ``projB/pbmc.h5ad`` (one dataset id before): each saves through the save sidecar's own code
    to the prefix the operator renders, and each gets its own annotations back."""
    settings = Settings(s3_bucket=bucket)
    for key in ("projA/pbmc.h5ad", "projB/pbmc.h5ad"):
        s3.put_object(Bucket=bucket, Key=key, Body=hdf5_header(1000))
    specs = [
        SingleUserInstanceSpec(owner="alice+lab@x.org", dataset=f"s3://{bucket}/projA/pbmc.h5ad"),
        SingleUserInstanceSpec(owner="alice_lab@x.org", dataset=f"s3://{bucket}/projA/pbmc.h5ad"),
        SingleUserInstanceSpec(owner="alice+lab@x.org", dataset=f"s3://{bucket}/projB/pbmc.h5ad"),
    ]
    prefixes = [viewer.user_data_url(spec, settings) for spec in specs]
    for i, prefix in enumerate(prefixes):
        src = tmp_path / f"viewer-{i}"
        src.mkdir()
        (src / "annotations.csv").write_text(f"cell_id,who\ncell_0,viewer-{i}\n")
        syncer = Syncer(s3, parse_s3_url(prefix, what="prefix", prefix=True), src, retries=0, backoff=0, settle=0)
        assert syncer.save_changed()
    for i, (spec, prefix) in enumerate(zip(specs, prefixes, strict=True)):
        dest = tmp_path / f"back-{i}"
        fetch(spec.dataset or "", prefix, dest, client=s3)
        assert (dest / "annotations.csv").read_text() == f"cell_id,who\ncell_0,viewer-{i}\n"


def test_data_saved_at_the_earlier_default_place_is_found_and_moves_on_the_next_save(
    moto_s3: MotoS3, s3: Any, bucket: str, tmp_path: Path
) -> None:
    settings = Settings(s3_bucket=bucket)
    spec = SingleUserInstanceSpec(owner="bob@x.org", dataset=f"s3://{bucket}/d/pbmc.h5ad")
    s3.put_object(Bucket=bucket, Key="d/pbmc.h5ad", Body=hdf5_header(1000))
    legacy = viewer.legacy_user_data_url(spec, settings)
    assert legacy == f"s3://{bucket}/cxg_on_k8/bob@x.org/pbmc/"
    s3.put_object(Bucket=bucket, Key="cxg_on_k8/bob@x.org/pbmc/annotations.csv", Body=b"cell_id,x\ncell_0,old\n")
    prefix = viewer.user_data_url(spec, settings)
    dest = tmp_path / "data"
    result = fetch(spec.dataset or "", prefix, dest, client=s3, legacy_user_data=legacy)
    assert result.restored == ["annotations.csv"]
    assert (dest / "annotations.csv").read_bytes() == b"cell_id,x\ncell_0,old\n"
    syncer = Syncer(s3, parse_s3_url(prefix, what="prefix", prefix=True), dest, retries=0, backoff=0, settle=0)
    assert syncer.save_changed()
    new_key = parse_s3_url(prefix, what="prefix", prefix=True).key + "annotations.csv"
    assert s3_text(s3, bucket, new_key) == "cell_id,x\ncell_0,old\n"
    # Once the new place holds data, the earlier one is no longer read.
    s3.put_object(Bucket=bucket, Key="cxg_on_k8/bob@x.org/pbmc/annotations.csv", Body=b"stale\n")
    again = fetch(spec.dataset or "", prefix, tmp_path / "again", client=s3, legacy_user_data=legacy)
    assert (tmp_path / "again" / "annotations.csv").read_bytes() == b"cell_id,x\ncell_0,old\n"
    assert again.restored == ["annotations.csv"]


def test_a_dataset_over_the_size_cap_is_refused_naming_the_setting(
    moto_s3: MotoS3, s3: Any, bucket: str, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="big.h5ad", Body=hdf5_header(5000))
    term = tmp_path / "term"
    result = run_userdata(
        "fetch", "--dataset", f"s3://{bucket}/big.h5ad", "--user-data", f"s3://{bucket}/u/",
        "--dest", str(tmp_path / "data"), "--max-size", "4Ki", "--termination-log", str(term), env=moto_s3.env(),
    )  # fmt: skip
    assert result.returncode == ExitCode.TOO_LARGE == 8
    assert "over the maximum 4096 (setting CXG_MAX_DATASET_SIZE)" in term.read_text()
    assert not (tmp_path / "data" / "dataset.h5ad").exists()


# --- sync -----------------------------------------------------------------------------------


def test_sync_saves_changes_with_history_and_once_more_on_sigterm(
    moto_s3: MotoS3, s3: Any, bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "data"
    src.mkdir()
    (src / "annotations.csv").write_text("cell_id,state\ncell_0,a\n")
    prefix = f"s3://{bucket}/cxg_on_k8/alice/pbmc/"
    key = "cxg_on_k8/alice/pbmc/"

    with running_sync(
        prefix, src, moto_s3.env(), "--interval", "3600", log_path=tmp_path / "sync.log"
    ) as sync:
        # the first pass runs at once: what was there is saved
        wait_until(
            lambda: s3_text(s3, bucket, key + "annotations.csv"), timeout=30, what="first save"
        )
        (src / "annotations.csv").write_text("cell_id,state\ncell_0,b\n")
        (src / "gene_sets.csv").write_text(
            "gene_set_name,gene_set_description,gene_symbol\nS,,g1\n"
        )
        # the interval is an hour: only the save on SIGTERM can store these
        assert sync.stop() == 0, sync.log()

    assert s3_text(s3, bucket, key + "annotations.csv") == "cell_id,state\ncell_0,b\n"
    assert (
        s3_text(s3, bucket, key + "gene_sets.csv")
        == "gene_set_name,gene_set_description,gene_symbol\nS,,g1\n"
    )
    history = history_keys(s3, bucket, key)
    assert len(history) == 3 and all(HISTORY_KEY.search(k) for k in history)
    assert [s3_text(s3, bucket, k) for k in history if k.endswith("annotations.csv")] == [
        "cell_id,state\ncell_0,a\n",
        "cell_id,state\ncell_0,b\n",
    ]
    assert "stop requested: saving once more" in sync.log()
    assert "sync stopped: 2 passes, 3 saves, 0 unchanged, 0 skipped, 0 failed" in sync.log()


def test_sync_uploads_nothing_when_nothing_changed_and_never_an_empty_file(
    moto_s3: MotoS3, s3: Any, bucket: str, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="d.h5ad", Body=hdf5_header(1000))
    s3.put_object(Bucket=bucket, Key="u/annotations.csv", Body=b"cell_id,state\ncell_0,a\n")
    dest = tmp_path / "data"
    fetch(f"s3://{bucket}/d.h5ad", f"s3://{bucket}/u/", dest, client=s3)
    (dest / "gene_sets.csv").write_bytes(b"")  # what a write cut short leaves behind

    with running_sync(
        f"s3://{bucket}/u/",
        dest,
        moto_s3.env(),
        "--interval",
        "0.2",
        log_path=tmp_path / "sync.log",
    ) as sync:
        wait_until(lambda: sync.log().count("is empty") >= 3, timeout=30, what="three passes")
        assert sync.stop() == 0

    assert history_keys(s3, bucket, "u/") == []
    assert s3_text(s3, bucket, "u/gene_sets.csv") is None
    assert "0 saves" in sync.log() and "0 failed" in sync.log()


def test_store_outage_is_retried_reported_and_never_touches_the_last_good_copy(
    moto_s3: MotoS3, s3: Any, bucket: str, relay: Relay, tmp_path: Path
) -> None:
    src = tmp_path / "data"
    src.mkdir()
    term = tmp_path / "termination-log"
    annotations = src / "annotations.csv"
    annotations.write_text("v1\n")

    def saved() -> str | None:
        return s3_text(s3, bucket, "u/annotations.csv")

    with running_sync(
        f"s3://{bucket}/u/", src, moto_s3.env(endpoint=relay.endpoint),
        "--interval", "0.3", "--retries", "2", "--backoff", "0.1", "--termination-log", str(term),
        log_path=tmp_path / "sync.log",
    ) as sync:  # fmt: skip
        wait_until(lambda: saved() == "v1\n", timeout=30, what="v1 saved")

        relay.cut()
        annotations.write_text("v2\n")
        wait_until(
            lambda: "annotations.csv not saved" in sync.log(), timeout=60, what="a failed save"
        )
        assert "(attempt 1 of 3)" in sync.log() and "(attempt 2 of 3)" in sync.log()
        assert saved() == "v1\n"
        assert f"cannot reach the S3 endpoint {relay.endpoint}" in term.read_text()

        relay.restore()
        wait_until(lambda: saved() == "v2\n", timeout=60, what="v2 saved once the store is back")
        wait_until(lambda: term.read_text() == "", timeout=30, what="the reported failure cleared")

        relay.cut()
        annotations.write_text("v3\n")
        code = sync.stop()

    assert code == ExitCode.SAVE_FAILED == 7
    message = term.read_text()
    assert message.startswith("annotations.csv not saved: user data s3://")
    assert message.rstrip().endswith("Changes since the last save are lost with the pod.")
    assert saved() == "v2\n"
    assert [s3_text(s3, bucket, k) for k in history_keys(s3, bucket, "u/")] == ["v1\n", "v2\n"]


# --- with cellxgene -------------------------------------------------------------------------


def put_annotations(venv: Path, cellxgene_viewer: str, columns: dict[str, list[str]]) -> None:
    """PUT /api/v0.2/annotations/obs as cellxgene's client does: a deflated FlatBuffers matrix.

    The matrix is encoded by cellxgene's own encoder (server.common.fbs.matrix), run in its venv.
    """
    encode = (
        "import json, sys, zlib\n"
        "import pandas as pd\n"
        "from server.common.fbs.matrix import encode_matrix_fbs\n"
        "df = pd.DataFrame(json.load(sys.stdin))\n"
        "sys.stdout.buffer.write(zlib.compress(encode_matrix_fbs(df, col_idx=df.columns)))\n"
    )
    body = subprocess.run(
        [str(venv / "bin" / "python"), "-c", encode],
        input=json.dumps(columns).encode(),
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    request = urllib.request.Request(
        f"{cellxgene_viewer}/api/v0.2/annotations/obs",
        data=body,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.load(response) == {"status": "OK"}


def put_gene_sets(cellxgene_viewer: str, gene_sets: list[dict[str, Any]], tid: int) -> None:
    """PUT /api/v0.2/genesets: the REST list format and a transaction id that must increase."""
    request = urllib.request.Request(
        f"{cellxgene_viewer}/api/v0.2/genesets",
        data=json.dumps({"genesets": gene_sets, "tid": tid}).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.load(response) == {"status": "OK"}


def get_json(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def user_columns(cellxgene_viewer: str) -> dict[str, list[str]]:
    """The writable (user) obs columns cellxgene serves, with their categories."""
    columns = get_json(f"{cellxgene_viewer}/api/v0.2/schema")["schema"]["annotations"]["obs"]["columns"]
    return {c["name"]: c["categories"] for c in columns if c.get("writable")}


TUMOUR_SET = {
    "geneset_name": "tumour markers",
    "geneset_description": "made in the viewer",
    "genes": [
        {"gene_symbol": "gene_3", "gene_description": ""},
        {"gene_symbol": "gene_7", "gene_description": "the strong one"},
    ],
}


def test_annotations_made_in_cellxgene_survive_the_pod(
    cellxgene_venv: Path, small_h5ad: Path, moto_s3: MotoS3, s3: Any, bucket: str, tmp_path: Path
) -> None:
    s3.upload_file(str(small_h5ad), bucket, "datasets/pbmc-small.h5ad")
    dataset = f"s3://{bucket}/datasets/pbmc-small.h5ad"
    key = "cxg_on_k8/alice@example.org/pbmc-small/"
    prefix = f"s3://{bucket}/{key}"
    first = tmp_path / "pod-1" / "data"

    fetched = run_userdata(
        "fetch",
        "--dataset",
        dataset,
        "--user-data",
        prefix,
        "--dest",
        str(first),
        env=moto_s3.env(),
    )
    assert fetched.returncode == 0, fetched.stderr
    assert "first visit" in fetched.stderr
    assert (first / "dataset.h5ad").read_bytes() == small_h5ad.read_bytes()

    states = ["tumour" if i % 3 == 0 else "normal" for i in range(300)]
    with running_sync(
        prefix, first, moto_s3.env(), "--interval", "1", log_path=tmp_path / "sync-1.log"
    ) as sync:
        with run_cellxgene(cellxgene_venv, first) as cellxgene_viewer:
            assert user_columns(cellxgene_viewer.url) == {}
            put_annotations(cellxgene_venv, cellxgene_viewer.url, {"cell_state": states})
            put_gene_sets(cellxgene_viewer.url, [TUMOUR_SET], tid=1)
            wait_until(
                lambda: (
                    "tumour" in (s3_text(s3, bucket, key + "annotations.csv") or "")
                    and "tumour markers" in (s3_text(s3, bucket, key + "gene_sets.csv") or "")
                ),
                timeout=60,
                what="the periodic save of the viewer's annotations and gene sets",
            )
            # a last change just before the pod stops
            put_annotations(
                cellxgene_venv, cellxgene_viewer.url, {"cell_state": states, "reviewed": ["yes"] * 300}
            )
        # as with a native sidecar: cellxgene has exited, now sync gets SIGTERM and saves
        assert sync.stop() == 0, sync.log()

    saved = s3_text(s3, bucket, key + "annotations.csv") or ""
    assert "cell_id,cell_state,reviewed" in saved and "cell_0,tumour,yes" in saved
    history = history_keys(s3, bucket, key)
    assert {k.rsplit("/", 1)[1] for k in history} == {"annotations.csv", "gene_sets.csv"}
    assert all(HISTORY_KEY.search(k) for k in history)

    second = tmp_path / "pod-2" / "data"
    refetched = run_userdata(
        "fetch",
        "--dataset",
        dataset,
        "--user-data",
        prefix,
        "--dest",
        str(second),
        env=moto_s3.env(),
    )
    assert refetched.returncode == 0, refetched.stderr
    assert (
        "restored annotations.csv" in refetched.stderr
        and "restored gene_sets.csv" in refetched.stderr
    )
    with run_cellxgene(cellxgene_venv, second) as cellxgene_viewer:
        assert user_columns(cellxgene_viewer.url) == {"cell_state": ["normal", "tumour"], "reviewed": ["yes"]}
        assert get_json(f"{cellxgene_viewer.url}/api/v0.2/genesets")["genesets"] == [TUMOUR_SET]


def test_truncated_real_h5ad_is_refused(
    cellxgene_venv: Path, small_h5ad: Path, moto_s3: MotoS3, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """An upload cut short still starts with the HDF5 signature; its superblock gives it away."""
    whole = small_h5ad.read_bytes()
    s3.put_object(Bucket=bucket, Key="d.h5ad", Body=whole[: len(whole) // 2])
    term = tmp_path / "term"
    result = run_userdata(
        "fetch", "--dataset", f"s3://{bucket}/d.h5ad", "--user-data", f"s3://{bucket}/u/",
        "--dest", str(tmp_path / "data"), "--termination-log", str(term), env=moto_s3.env(),
    )  # fmt: skip
    assert result.returncode == ExitCode.CORRUPT
    assert (
        f"truncated .h5ad ({len(whole) // 2} bytes, its HDF5 superblock says {len(whole)})"
        in term.read_text()
    )
