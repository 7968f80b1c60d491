"""The proof of concept's entry point, kept so that `python3 deploy_cellxgene.py ...` still works.

It is `cxg-k8s deploy ...` under its old name.
"""

import sys

from cxg_on_k8s.cli.main import main

if __name__ == "__main__":
    # Through main(), not app(): the same exit codes as `cxg-k8s deploy`, Ctrl-C (130) included.
    sys.argv[1:1] = ["deploy"]
    main()
