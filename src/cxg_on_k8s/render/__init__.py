"""Kubernetes objects as pure functions: a viewer's children, the embedded form's kept parts, the plan
the operator carries out, the installation and the samples. Nothing here talks to a cluster."""
