"""``python -m relay`` runs the ``relay`` command."""

import sys

from relay.cli import main

sys.exit(main())
