import sys

from cxg_devcluster.cluster import main

sys.exit(main())
