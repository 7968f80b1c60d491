"""The operator: kopf's handlers (thin: they carry out what ``render.plan`` decides), the
instance's status from its pod, ownership of children and peering between replicas."""
