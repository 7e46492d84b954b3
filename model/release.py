"""Old path of `python -m model.tools.release`."""
import sys

from model.tools.release import main

if __name__ == "__main__":
    sys.exit(main())
