"""``python -m rlmesh.cli``: the same as the ``rlmesh`` command."""

import sys

from rlmesh.cli.root import main

sys.exit(main())
