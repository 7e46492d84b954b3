"""The reading networks evaluation scores with: the inverse-dynamics model (which keys made these
frames) and the theme classifier (what a frame shows), how they load, and their training."""
