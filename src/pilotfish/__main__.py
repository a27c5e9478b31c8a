"""`python -m pilotfish`."""

from __future__ import annotations

import sys

from pilotfish.cli import main

sys.exit(main())
