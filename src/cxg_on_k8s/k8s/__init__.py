"""The one Kubernetes client the package uses, and its one error type."""
