"""The driver process: the campaign loop, dispatch onto slots, completion and writes."""
