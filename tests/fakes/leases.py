"""A results directory's lease as another driver left it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from lem_ray.results.lease import LEASE_FILE


def held_by(results: Path, **fields: Any) -> dict[str, Any]:
    """Write a lease as another driver would have: another host unless fields say otherwise."""
    now = datetime.now(timezone.utc)
    record = {"host": "gpu-node-7", "pid": 4242, "pid_started_s": 1.0e9,
              "machine": "gpu-node-7/boot/pid:[1]", "token": "f" * 32,
              "since": (now - timedelta(hours=1)).isoformat(timespec="seconds"),
              "renewed_at": now.isoformat(timespec="seconds"), **fields}
    results.mkdir(parents=True, exist_ok=True)
    (results / LEASE_FILE).write_text(json.dumps(record))
    return record
