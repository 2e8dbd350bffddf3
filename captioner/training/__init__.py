"""Training: a run's set-up and loop, batch plans, losses, resumable state, the word detectors and DDP."""
