"""What every layer of model/ shares: checkpoints, run logs, devices, files, images."""
