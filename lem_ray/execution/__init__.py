"""Running a plan on Ray: the driver, workers on placement groups, samplers, pre-run checks."""
