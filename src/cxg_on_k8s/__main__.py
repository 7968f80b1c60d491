"""``python -m cxg_on_k8s`` is ``cxg-k8s``."""

from cxg_on_k8s.cli.main import main

main()
