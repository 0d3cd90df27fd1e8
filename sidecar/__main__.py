"""`python -m sidecar`: the `dgdo` command (sidecar/shell/cli.py)."""

import sys

from sidecar.shell.cli import main

if __name__ == "__main__":
    sys.exit(main())
