"""Personal cellxgene viewers on Kubernetes."""
