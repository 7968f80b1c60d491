"""Write a small, real, deterministic .h5ad that cellxgene 1.3.0 accepts.

Run it with the cellxgene venv's python (scripts/cellxgene-venv.sh prints the venv), which has
anndata and numpy; the operator's environment deliberately has neither. cellxgene refuses a
dataset without an embedding, so X_umap is always written; the categorical obs column gives the
viewer something to colour by, and the gene names are what gene sets refer to (gene_0, gene_1, ...).

    make_h5ad.py OUT --cells N --genes M [--seed S]
"""

from __future__ import annotations

import argparse
import os

import anndata
import numpy as np
import pandas as pd

CELL_TYPES = ["B cell", "T cell", "NK cell", "monocyte", "dendritic cell"]


def make(cells: int, genes: int, seed: int) -> anndata.AnnData:
    """A dataset with clusters in the embedding that line up with the cell_type column."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, len(CELL_TYPES), size=cells)
    centres = rng.normal(0, 10, size=(len(CELL_TYPES), 2))
    umap = (centres[cluster] + rng.normal(0, 1, size=(cells, 2))).astype(np.float32)
    x = rng.gamma(1.0, 1.0, size=(cells, genes)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(cluster, CELL_TYPES),
            "n_counts": x.sum(axis=1),
        },
        index=pd.Index([f"cell_{i}" for i in range(cells)], name="cell_id"),
    )
    var = pd.DataFrame(index=pd.Index([f"gene_{j}" for j in range(genes)], name="gene_symbol"))
    return anndata.AnnData(X=x, obs=obs, var=var, obsm={"X_umap": umap})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="Path of the .h5ad to write (written whole, then renamed).")
    parser.add_argument("--cells", type=int, default=300, help="Number of cells (default 300).")
    parser.add_argument("--genes", type=int, default=50, help="Number of genes (default 50).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    args = parser.parse_args()
    if args.cells < 1 or args.genes < 1:
        parser.error("--cells and --genes must be at least 1")
    tmp = f"{args.out}.part"
    make(args.cells, args.genes, args.seed).write_h5ad(tmp)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
