"""Old path of `python -m controls.worker_memory` (the soak test is a client of the worker)."""
import sys

from controls.worker_memory import main

if __name__ == "__main__":
    sys.exit(main())
