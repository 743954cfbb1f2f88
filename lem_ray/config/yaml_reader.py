"""Reading a hand-written YAML file safely: bounded size, bounded alias expansion, no
duplicate keys, UTF-8 only. A campaign file is small; anything else is a mistake or an attack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from typing_extensions import override

from lem_ray.errors import ConfigError

MAX_FILE_BYTES = 1024 * 1024
"""A campaign with hundreds of axes is a few kilobytes; a megabyte is not a campaign."""
MAX_NODES = 100_000
"""YAML nodes after aliases are expanded: a few `*ref`s must not become millions of values."""
MAX_DEPTH = 64


class _Refusal(yaml.YAMLError):
    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.problem = message
        self.problem_mark = mark


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and counts nodes with aliases expanded."""

    @override
    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)

    @override
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                raise _Refusal("a mapping key must be a plain value", key_node.start_mark) from None
            if first is not key_node:
                raise _Refusal(
                    f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node) -> None:
    """Count nodes as if every alias were copied out, without copying; refuse cycles."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Refusal("an alias refers to a node that contains it", node.start_mark)
        if depth > MAX_DEPTH:
            raise _Refusal(f"nested deeper than {MAX_DEPTH} levels", node.start_mark)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                raise _Refusal(
                    f"more than {MAX_NODES} values once aliases are expanded "
                    "(aliases that nest aliases grow exponentially)",
                    node.start_mark,
                )
        active.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def read_yaml(path: Path) -> Any:
    """The parsed document, or a ConfigError naming the file (and line, where there is one)."""
    if not path.exists():
        raise ConfigError("file not found", file=str(path))
    if not path.is_file():
        raise ConfigError("not a file", file=str(path))
    size_bytes = path.stat().st_size
    if size_bytes > MAX_FILE_BYTES:
        raise ConfigError(
            f"{size_bytes} bytes; a campaign file may have at most {MAX_FILE_BYTES}",
            file=str(path),
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8",
            file=str(path),
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes a ConfigError with line and column."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        kind = "" if isinstance(exc, _Refusal) else "YAML syntax error: "
        raise ConfigError(f"{kind}{where}{problem}", file=source) from None
    except (ValueError, OverflowError) as exc:
        raise ConfigError(f"YAML value error: {exc}", file=source) from None
    except RecursionError:
        raise ConfigError(f"nested deeper than {MAX_DEPTH} levels", file=source) from None
