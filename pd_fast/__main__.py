"""`python -m pd_fast`: the main job (see `pd_fast.app.cli`)."""

import sys

from pd_fast.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
