"""The user's data: the dataset and the user's annotations, fetched before cellxgene starts and
saved back while it runs, so that nothing the user made is lost.

One code path serves the pod and the tests::

    python -m cxg_on_k8s.userdata fetch --dataset s3://b/k.h5ad --user-data s3://b/p/ --dest /data
    python -m cxg_on_k8s.userdata sync --user-data s3://b/p/ --src /data --interval 120

``fetch`` is the pod's init container. ``sync`` runs beside cellxgene (best as a native sidecar,
which Kubernetes stops only after cellxgene has exited) and saves once more when it gets SIGTERM.
boto3 takes the credentials and the endpoint from the standard variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL).

A failure ends with one line that names the object, the cause and the fix, on stderr and in the
termination log, which Kubernetes copies into the container status for the operator to show.

Saving is keep-previous: every changed file goes first to ``<prefix>history/<UTC time>/<file>``,
then over ``<prefix><file>`` (one S3 PUT is atomic), so a failed save never touches the last
good copy. ``<dir>/.userdata-state.json`` records the hash of what S3 holds, so that a restarted
``sync`` still saves changes made before the restart and a re-run ``fetch`` never overwrites
local changes that were not saved yet.

The package runs in the viewer pod's data containers and imports nothing of the operator, not
even its settings. ``command`` is the command line, ``fetch`` and ``sync`` are its two jobs, and
``errors``, ``s3``, ``retry``, ``state`` and ``h5ad`` serve them.
"""
