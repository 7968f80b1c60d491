"""The ``cxg-k8s`` command line."""
