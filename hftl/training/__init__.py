"""Training: loaders and optimizer from the plan, the Accelerate loop, evaluation, the run folder and its
state, the feature cache, adaptation, the probe head, trackers."""
