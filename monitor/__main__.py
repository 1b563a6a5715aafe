"""`python -m monitor` runs the smtp-monitor command line."""

import sys

from monitor.cli.main import main

sys.exit(main())
