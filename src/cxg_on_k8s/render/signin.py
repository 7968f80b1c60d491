"""The sign-in sidecar of a viewer pod: oauth2-proxy in reverse-proxy mode in front of the viewer.

With every edge but ingress-nginx the pod signs its users in itself, so the edge needs nothing
but a plain route: the sidecar lets in the owner and ``allowedGroups`` alone, keeps its session
in a cookie of its own (path ``/<name>/``, a key generated in the pod), strips the ``/<name>/``
prefix on the way to the viewer and counts every answer by status for the operator's activity.
"""

from __future__ import annotations

SIGNIN_CONTAINER = "signin"
# oauth2-proxy's own default port; the Service and every route target it by the name below.
SIGNIN_PORT = 4180
SIGNIN_PORT_NAME = "signin"
SIGNIN_METRICS_PORT = 44180
SIGNIN_METRICS_PORT_NAME = "signin-metrics"
# Only the request counters: the sidecar's full page is mostly Go runtime series.
SIGNIN_METRICS_PATH = "/metrics?name[]=oauth2_proxy_requests_total"
