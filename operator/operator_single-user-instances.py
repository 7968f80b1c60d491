"""The proof of concept's operator file, kept so that its documented command still works:

    CXG_NAMESPACE=NS kopf run -n NS operator/operator_single-user-instances.py

It only imports the package's handlers (``cxg_on_k8s.controller.handlers``), which register themselves with
kopf. Settings come from the environment as for ``cxg-k8s operator`` (``CXG_NAMESPACE`` must name
the namespace given to ``-n``; the PoC's ``K8_SUI_OP_TICK`` and ``K8_SUI_OP_TO_UNVIS`` still work).
Peering as in the PoC: run from a laptop (priority 0) it pauses while the in-cluster operator
(priority 100) runs; ``kopf run --standalone`` turns peering off.
"""

import cxg_on_k8s.controller.handlers  # noqa: F401  (its handlers register themselves with kopf)
