"""`python -m telemetry`: the library's pack commands without the pipelines."""

import sys

from telemetry.cli import main

sys.exit(main())
