"""Checks before a campaign runs: preflight, doctor, the runtime env, shared storage."""
