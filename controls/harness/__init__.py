"""Load and soak harnesses: clients that drive a real worker and measure it (memory over a long run,
several sessions at once, faults, isolation between players)."""
