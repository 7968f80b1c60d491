"""What a user waits for when a viewer starts, and what it costs: measured, not asserted.

For generated datasets (default 3 000 and 100 000 cells, ``--genes`` genes each, dense float32)
served by moto's S3 server on this machine:

- fetch:      wall time of ``python -m cxg_on_k8s.userdata fetch`` (process start to exit,
              first visit, so dataset only), and the download alone as fetch logs it;
- answer:     from launching ``cellxgene launch`` to /health answering (data loaded);
- first view: the requests a browser makes first (schema, config, layout, one category, one
              gene's expression), timed after /health answered;
- peak RSS:   VmHWM of the cellxgene process after the first view;

each without and with ``--backed``. moto is local, so fetch times are the floor a real S3 adds
network to. Usage::

    .venv/bin/python bench/startup.py [--cells 3000,100000] [--genes 2000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cxg_devcluster.cluster import peak_rss_mib

from tests.fixtures_s3 import (  # after the path is set
    MotoS3,
    ensure_cellxgene_venv,
    make_h5ad,
    moto_server,
    run_cellxgene,
)

BUCKET = "bench"


def get(url: str, accept: str) -> bytes:
    """GET as a browser does. The gzip matters: without it cellxgene 1.3.0 under Werkzeug 3
    fails its binary endpoints ("applications must write bytes"); Flask-Compress hides that."""
    headers = {"Accept": accept, "Accept-Encoding": "gzip"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=300) as r:
        body = bytes(r.read())
        return gzip.decompress(body) if r.headers.get("Content-Encoding") == "gzip" else body


def first_view(viewer: str) -> None:
    """The requests cellxgene's web client sends before the user sees the embedding and a gene."""
    schema = json.loads(get(f"{viewer}/api/v0.2/schema", "application/json"))["schema"]
    get(f"{viewer}/api/v0.2/config", "application/json")
    get(f"{viewer}/api/v0.2/layout/obs", "application/octet-stream")
    get(f"{viewer}/api/v0.2/annotations/obs?annotation-name=cell_type", "application/octet-stream")
    var_index = schema["annotations"]["var"]["index"]
    get(f"{viewer}/api/v0.2/data/var?var:{var_index}=gene_1", "application/octet-stream")


def fetch(store: MotoS3, key: str, dest: Path) -> tuple[float, float, float]:
    """(process wall time s, download time s as fetch logged it, peak RSS MiB) of one fetch.

    The peak RSS comes from wait4() on that very child, so it is fetch's own, not moto's or
    cellxgene's; it is what the data containers' memory limit must cover.
    """
    log_path = dest.parent / "fetch.log"
    dest.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cxg_on_k8s.userdata", "fetch", "--dataset", f"s3://{BUCKET}/{key}",
             "--user-data", f"s3://{BUCKET}/users/bench/{key}/", "--dest", str(dest)],
            env=store.env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    log = log_path.read_text()
    if process.returncode != 0:
        raise SystemExit(f"fetch failed ({process.returncode}): {log}")
    match = re.search(r"bytes in ([0-9.]+) s\)", log)
    return wall, float(match.group(1)) if match else float("nan"), usage.ru_maxrss / 1024


def measure(venv: Path, data: Path, backed: bool) -> dict[str, Any]:
    started = time.monotonic()
    with run_cellxgene(venv, data, *(["--backed"] if backed else []), timeout=600) as viewer:
        answer = time.monotonic() - started
        view_started = time.monotonic()
        first_view(viewer.url)
        view = time.monotonic() - view_started
        peak = peak_rss_mib(viewer.process.pid)  # read before the viewer stops: /proc forgets it
        assert peak is not None, f"no VmHWM in /proc/{viewer.process.pid}/status"
    return {"answer": answer, "view": view, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="3000,100000", help="Comma-separated cell counts.")
    parser.add_argument("--genes", type=int, default=2000, help="Genes per dataset (default 2000).")
    args = parser.parse_args()
    cells = [int(c) for c in args.cells.split(",")]

    venv = ensure_cellxgene_venv()
    with tempfile.TemporaryDirectory(prefix="cxg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with moto_server(tmp / "moto.log") as endpoint:
            store = MotoS3(endpoint, "bench", "bench", tmp / "moto.log")
            s3 = store.client()
            s3.create_bucket(Bucket=BUCKET)
            print(
                f"cellxgene 1.3.0 from {venv}; S3 = moto at {endpoint}; {args.genes} genes, dense float32"
            )
            print(f"{'cells':>8} {'h5ad MB':>8} {'fetch s':>8} {'(dl s)':>7} {'fetch MiB':>9} "
                  f"{'backed':>6} {'answer s':>9} {'1st view s':>10} {'peak RSS MiB':>12}")  # fmt: skip
            for n in cells:
                source = make_h5ad(venv, tmp / f"{n}.h5ad", cells=n, genes=args.genes)
                key = f"datasets/{n}-cells.h5ad"
                s3.upload_file(str(source), BUCKET, key)
                size_mb = source.stat().st_size / 1e6
                data = tmp / f"pod-{n}" / "data"
                wall, download, fetch_rss = fetch(store, key, data)
                for backed in (False, True):
                    m = measure(venv, data, backed)
                    print(
                        f"{n:>8} {size_mb:>8.1f} {wall:>8.2f} {download:>7.2f} {fetch_rss:>9.0f} "
                        f"{'yes' if backed else 'no':>6} {m['answer']:>9.2f} {m['view']:>10.2f} "
                        f"{m['peak']:>12.0f}",
                        flush=True,
                    )
                source.unlink()


if __name__ == "__main__":
    main()
