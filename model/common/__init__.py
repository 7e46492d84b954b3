"""What every layer of model/ shares: checkpoints, run logs, devices, files, images, and the rollout
loop (rollout.py) that drives a world for evaluation and for the readers' rendered training episodes."""
