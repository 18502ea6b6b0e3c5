"""`python -m minitron ...`: the same command as `minitron ...` (and `torchrun ... -m minitron ...`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
