"""`python -m mkd` is the `mkd` command (the systemd unit uses this form)."""

import sys

from mkd.cli import main

sys.exit(main())
