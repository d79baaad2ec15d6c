"""``python -m nucleisam`` runs the CLI."""

import sys

from nucleisam.cli import main

sys.exit(main())
