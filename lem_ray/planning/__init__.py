"""Campaign config to a plan: expanded experiments with stable ids, runs in order."""
