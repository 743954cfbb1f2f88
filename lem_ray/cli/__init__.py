"""The `lem-ray` command: a thin face over the package; nothing imports it."""
