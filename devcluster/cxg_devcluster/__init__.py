"""The dev cluster: a real local control plane (``cluster``) and a real kubelet node beside kwok's
fake ones (``node``), for the demo, the tests and the benchmarks. It is not part of the
``cxg-on-k8s`` wheel: users run the operator on their own clusters."""
