"""kopf's diff-base in annotations, built without copying what it throws away.

For every event of an instance kopf builds the instance's essence (spec, labels, annotations) to
compare with the last handled one. Its ``build`` deep-copies the whole body first, managedFields
and status included, and then drops them: with a thousand instances starting at once that copy
was about a quarter of the operator's event-loop time (py-spy on ``bench/spawn.py``,
bench/RESULTS.md, 2026-12-03). This storage hands kopf's own ``build`` only the parts it keeps, so
the essence, and the annotation kopf writes and reads, stay exactly kopf's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import kopf

# What kopf's build reads from metadata: the labels and annotations it keeps, and the owners its
# storage key depends on (``mark_key``). Nothing else of metadata reaches the essence.
KEPT_METADATA = ("labels", "annotations", "ownerReferences")
DROPPED = ("metadata", "status")


def _top(field: Any) -> str:
    """The first key of a kopf field spec: ``"a.b"``, ``("a", "b")`` or ``["a", "b"]``."""
    return field.split(".", 1)[0] if isinstance(field, str) else str(field[0])


class LeanAnnotationsDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """:class:`kopf.AnnotationsDiffBaseStorage` whose essence is built from the body minus its
    status and the metadata kopf drops. A handler ``field`` in metadata or status needs the whole
    body: then kopf's build runs on it unchanged."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        fields = list(extra_fields or ())
        if any(_top(field) in DROPPED for field in fields):
            return super().build(body=body, extra_fields=fields)
        meta = body.get("metadata") or {}
        lean: dict[str, Any] = {key: value for key, value in body.items() if key not in DROPPED}
        lean["metadata"] = {key: meta[key] for key in KEPT_METADATA if key in meta}
        return super().build(body=kopf.Body(cast(kopf.RawBody, lean)), extra_fields=fields)
