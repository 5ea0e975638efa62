"""``python -m posegraph.cli``: the ``posegraph`` command."""

import sys

from posegraph.cli.main import main

sys.exit(main())
