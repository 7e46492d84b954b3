"""Tools around trained worlds: release bundles, side-by-side showcases."""
