"""``python -m cxg_on_k8s.userdata``: what the viewer pod's data containers run."""

import sys

from cxg_on_k8s.userdata.command import main

sys.exit(main())
