"""`_extends: base.yaml`: a campaign file merged over the file it extends.

Big campaigns split into a shared base and small variants. The path is relative to the file
that names it; chains are followed; a cycle is refused naming the chain. Mappings merge key by
key, anything else (lists included) is replaced whole by the extending file's value.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lem_ray.config.base import no_control_characters
from lem_ray.errors import ConfigError

EXTENDS_KEY = "_extends"


def merge(base: Any, over: Any) -> Any:
    """`over` on top of `base`: mappings key by key (recursively), any other value replaced."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    if "source" in base and "source" in over and base["source"] != over["source"]:
        return over  # a tagged section (prompts) switching variant: the old keys mean nothing
    merged = dict(base)
    for key, value in over.items():
        merged[key] = merge(base[key], value) if key in base else value
    return merged


def read_extended(path: Path, read: Callable[[Path], Any]) -> Any:
    """The file's data with its `_extends` chain merged underneath; `read` parses one file."""
    start = path.resolve().parent
    chain: list[Path] = []

    def shown(p: Path) -> str:
        return os.path.relpath(p, start)

    def load(current: Path) -> Any:
        resolved = current.resolve()
        if resolved in chain:
            names = " -> ".join(shown(p) for p in [*chain, resolved])
            raise ConfigError(f"_extends cycle: {names}", file=str(path))
        chain.append(resolved)
        data = read(current)
        if not isinstance(data, dict) or EXTENDS_KEY not in data:
            return data
        parent = data[EXTENDS_KEY]
        if not isinstance(parent, str) or not parent.strip():
            raise ConfigError(f"must be a path to a campaign file (got {parent!r})",
                              path=EXTENDS_KEY, file=str(current))
        try:
            no_control_characters(parent)
        except ValueError as exc:
            raise ConfigError(f"{exc} (got {parent[:200]!r})", path=EXTENDS_KEY,
                              file=str(current)) from None
        base = load(resolved.parent / Path(parent).expanduser())
        if not isinstance(base, dict):
            kind = "empty" if base is None else type(base).__name__
            raise ConfigError(f"{parent} must be a YAML mapping, got {kind}",
                              path=EXTENDS_KEY, file=str(current))
        own = {k: v for k, v in data.items() if k != EXTENDS_KEY}
        return merge(base, own)

    return load(path)
