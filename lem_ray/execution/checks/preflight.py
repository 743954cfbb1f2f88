"""What can be checked before Ray starts, is: a bad address or results directory then costs
a second, not a Ray start, a traceback, or a hang while Ray retries an address for minutes.

Imports no Ray, so `--dry-run` runs these checks too.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from lem_ray.assets import BUILTIN_PREFIX
from lem_ray.errors import ConfigError
from lem_ray.planning.plan import CampaignPlan
from lem_ray.results.compile_cache import check_location as check_compile_cache
from lem_ray.results.manifest import ManifestDamaged
from lem_ray.results.ownership import check_results_dir

PROBE_TIMEOUT_S = 5.0
"""A head node that does not answer a TCP connect in this time is not one to run on."""
KEYWORDS = ("auto", "local")
CLIENT_SCHEME = "ray://"


@dataclass(frozen=True)
class Address:
    """A `--address` as given, with host and port where it names them."""

    text: str
    host: str | None = None
    port: int | None = None


def parse_address(text: str | None, source: str = "--address") -> Address | None:
    """None (start a local Ray), `auto`, `local`, `HOST:PORT` or `ray://HOST:PORT`."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text in KEYWORDS:
        return Address(text)
    rest = text[len(CLIENT_SCHEME):] if text.startswith(CLIENT_SCHEME) else text
    if "://" in rest:
        raise ConfigError(f"{text!r}: use HOST:PORT, ray://HOST:PORT, auto or local", path=source)
    host, sep, port_text = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ConfigError(f"{text!r} has no port: use HOST:PORT (the head's GCS port, "
                          "6379 by default) or ray://HOST:PORT", path=source)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{text!r}: port {port_text!r} is not a number from 1 to 65535",
                          path=source)
    return Address(text, host, int(port_text))


def given_address(address: str | None) -> tuple[Address | None, str]:
    """The address to use (the option, else RAY_ADDRESS) and where it came from."""
    if address:
        return parse_address(address, "--address"), "--address"
    return parse_address(os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS"), "RAY_ADDRESS"


def probe(address: Address, source: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """One TCP connect to the head: Ray itself retries an unreachable address for minutes."""
    if address.host is None or address.port is None:
        return
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout_s):
            return
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(
            f"cannot reach a Ray cluster at {address.text} ({why} within {timeout_s:g} s); "
            "start one, or leave the address out to run on a local Ray", path=source
        ) from None


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_models(plan: CampaignPlan) -> list[str]:
    """Model and tokenizer names that are neither shipped nor a local path: hub ids."""
    names = {n for e in plan.experiments for n in (e.config.model_name, e.config.tokenizer) if n}
    return sorted(n for n in names if not n.startswith(BUILTIN_PREFIX) and HUB_ID.match(n)
                  and not os.path.exists(os.path.expanduser(n)))


def check_hub(models: list[str], timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """A hub model not in the local cache needs the hub: find out now, in seconds, rather than
    in every worker after a minute of retries."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return
    missing = [m for m in models if not isinstance(try_to_load_from_cache(m, "config.json"), str)]
    if not missing:
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ConfigError(f"{missing[0]} is not in the local Hugging Face cache and "
                          "HF_HUB_OFFLINE is set: download it first, or give a local path",
                          path="model_name")
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=timeout_s):
            return
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(
            f"{missing[0]} is not in the local Hugging Face cache and {endpoint.geturl()} cannot "
            f"be reached ({why}); download it where there is network, or give a local path",
            path="model_name",
        ) from None


def preflight(plan: CampaignPlan, results_dir: str, address: str | None, fresh: bool,
              reach: bool) -> None:
    """Refuse now what would fail after Ray started. `reach` (not in a dry run) also contacts
    the cluster, and the model hub when Ray runs here (a cluster's nodes have their own).
    A damaged manifest passes where the campaign runs: its driver rebuilds it."""
    parsed, source = given_address(address)
    try:
        check_results_dir(results_dir, plan.name, fresh)
    except ManifestDamaged as exc:
        if not reach:
            raise ConfigError(f"{exc}; `lem-ray campaign` without --dry-run rebuilds it from "
                              "the dataset") from None
    check_compile_cache(plan.campaign.execution.compile_cache)
    if not reach:
        return
    if parsed is not None:
        probe(parsed, source)
    if parsed is None or parsed.text == "local":
        check_hub(hub_models(plan))
