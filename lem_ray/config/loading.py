"""Read a campaign file into a validated CampaignConfig, or fail with a ConfigError."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, SecretStr, ValidationError

from lem_ray.config.campaign import CampaignConfig
from lem_ray.config.extends import read_extended
from lem_ray.config.yaml_reader import read_yaml
from lem_ray.errors import ConfigError


def format_loc(loc: tuple[Any, ...] | list[Any], prefix: str = "") -> str:
    """A pydantic error location as the dotted key a user wrote (`grid.shared[0]`)."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that owns the last key of `loc` (tags of tagged unions included in loc)."""
    candidates = [model]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        owners = [c for c in candidates if part in c.model_fields]
        if owners:
            candidates = _models_in(owners[0].model_fields[part].annotation)
        else:
            candidates = [
                c for c in candidates
                if part in get_args(getattr(c.model_fields.get("source"), "annotation", None))
            ] if all("source" in c.model_fields for c in candidates) else []
    return candidates[0] if len(candidates) == 1 else None


def _display_loc(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """`loc` without the tags pydantic inserts for tagged unions (prompts.synthetic.count)."""
    shown: list[Any] = []
    for i, part in enumerate(loc):
        owner = _model_at(model, loc[: i + 1]) if isinstance(part, str) else None
        known = owner is not None and part in owner.model_fields
        if isinstance(part, int) or known or i == len(loc) - 1:
            shown.append(part)
    return tuple(shown)


def _is_secret(model: type[BaseModel], loc: tuple[Any, ...]) -> bool:
    """The value at `loc` is a secret (a webhook URL): an error line must not print it."""
    owner = _model_at(model, loc) if loc and isinstance(loc[-1], str) else None
    field = owner.model_fields.get(loc[-1]) if owner else None
    if field is None:
        return False
    return SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))


def _short(value: Any, limit: int = 60) -> str:
    """A value as the user wrote it, cut short: an error line must stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def error_from_validation(
    exc: ValidationError, model: type[BaseModel], prefix: str = "", origin: Any = None
) -> ConfigError:
    """First error of a pydantic failure as a ConfigError naming its key path."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    shown = _display_loc(model, loc)
    path = origin(shown) if origin else format_loc(shown, prefix)
    if err["type"] == "extra_forbidden":
        owner = _model_at(model, loc)
        allowed = ", ".join(owner.model_fields) if owner else "?"
        return ConfigError(f"unknown key {loc[-1]!r}; allowed keys: {allowed}", path=path)
    value = err.get("input")
    hidden = err["type"] == "missing" or isinstance(value, dict) or _is_secret(model, loc)
    got = "" if hidden else f" (got {_short(value)})"
    message = err["msg"].removeprefix("Value error, ")
    return ConfigError(f"{message}{got}", path=path)


def parse_campaign(data: Any, source: str = "<campaign>") -> CampaignConfig:
    """Validate parsed YAML as a campaign; a ConfigError names the key and the file."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise ConfigError(f"a campaign file must be a YAML mapping, got {kind}", file=source)
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as exc:
        raise error_from_validation(exc, CampaignConfig).with_file(source) from None


def load_campaign(path: str | Path) -> CampaignConfig:
    """Read a campaign file (following `_extends`) and validate it."""
    path = Path(path)
    return parse_campaign(read_extended(path, read_yaml), str(path))
