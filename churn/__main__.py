"""``python -m churn``."""

import sys

from churn._cli import main

if __name__ == "__main__":
    sys.exit(main())
