"""Training: losses, the Lightning module, checkpoints and the fit loop."""
