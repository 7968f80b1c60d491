"""The proof of concept's entry point, kept so that `python3 deploy_cellxgene.py ...` still works.

It is `cxg-k8s deploy ...` under its old name.
"""

import sys

from cxg_on_k8s.cli import app

if __name__ == "__main__":
    sys.exit(app(args=["deploy", *sys.argv[1:]]))
