"""Old path of `python -m model.tools.showcase`."""
import sys

from model.tools.showcase import main

if __name__ == "__main__":
    sys.exit(main())
