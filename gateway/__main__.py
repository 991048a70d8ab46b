"""``python -m gateway`` is the ``hearth`` command."""

import sys

from gateway.cli import main

sys.exit(main())
