"""The host's CPU package and DRAM energy, from Linux powercap (RAPL) counters.

`/sys/class/powercap/intel-rapl:N` is one CPU package (`name` package-N; AMD EPYC exposes the
same zones), `intel-rapl:N:M` its subzones, of which `dram` is the memory's; `core` and
`uncore` are inside the package's figure and a `psys` zone covers the whole platform, so
neither is added. Each zone's `energy_uj` wraps at `max_energy_range_uj`: the reader
unwraps every read against the last one, so windows longer than one wrap stay exact as long
as reads come more often than a wrap (the sampler's ~100 ms ticks against minutes at full
power). Nothing here knows Ray or NVML; the sysfs root is a parameter so tests use fake trees.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

POWERCAP_ROOT = "/sys/class/powercap"
SOURCE_RAPL = "rapl"
CPU, DRAM = "cpu", "dram"

Reader = Callable[[str], str]
"""Reads a sysfs file's text; tests inject one that raises as a denied or vanished file does."""

PERMISSION_FIX = (
    "energy_uj is readable by root only since Linux 5.10: on each node run "
    "`sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj "
    "/sys/class/powercap/intel-rapl:*/intel-rapl:*/energy_uj` (or a udev rule doing so at boot)"
)
MISSING = ("no powercap on this host: a VM (hypervisors do not pass RAPL through), a CPU or "
           "kernel without RAPL, or a container without the host's /sys/class/powercap")
MISSING_FIX = ("on bare metal: modprobe intel_rapl_common; in a container: mount the host's "
               "/sys/class/powercap into it (read-only); a VM cannot measure its host")


def read_text(path: str) -> str:
    """A sysfs file's content, stripped."""
    with open(path, encoding="ascii") as f:
        return f.read().strip()


@dataclass(frozen=True)
class RaplZone:
    """One RAPL energy counter of the host: a CPU package or its DRAM."""

    path: str
    name: str
    kind: str
    """CPU (a package) or DRAM (a package's dram subzone)."""
    max_energy_range_uj: int


@dataclass(frozen=True)
class HostCounters:
    """One read of every zone: unwrapped µJ since the reader's first read (None where the zone
    could not be read), and how many reads of each zone have failed so far."""

    t_s: float
    totals_uj: dict[str, int | None]
    failures: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HostWindow:
    """Host energy of one window; a null figure has its reason, as the GPU columns do."""

    cpu_energy_j: float | None
    dram_energy_j: float | None
    source: str | None
    unavailable_reason: str | None

    @property
    def energy_j(self) -> float | None:
        """CPU plus DRAM where the node has a DRAM zone (source names what was added)."""
        if self.cpu_energy_j is None:
            return None
        return self.cpu_energy_j + (self.dram_energy_j or 0.0)


def discover(
    root: str = POWERCAP_ROOT, read: Reader = read_text
) -> tuple[list[RaplZone], str | None]:
    """(the package and dram zones whose energy_uj reads, why none can be used)."""
    if not os.path.isdir(root):
        return [], f"{root} does not exist: {MISSING}"
    packages = sorted((d for d in os.listdir(root) if re.fullmatch(r"intel-rapl:\d+", d)),
                      key=lambda d: int(d.split(":")[1]))
    zones: list[RaplZone] = []
    problems: list[str] = []
    for package in packages:
        path = os.path.join(root, package)
        subzones = sorted(d for d in os.listdir(path) if d.startswith(f"{package}:"))
        candidates = [(path, CPU)] + [(os.path.join(path, d), DRAM) for d in subzones]
        for zone_path, kind in candidates:
            zone, problem = _zone(zone_path, kind, read)
            if zone is not None:
                zones.append(zone)
            elif problem is not None:
                problems.append(problem)
    if any(z.kind == CPU for z in zones):
        return zones, None
    if problems:
        return [], problems[0]
    return [], f"no RAPL package zone (intel-rapl:N) under {root}: {MISSING}"


def _zone(path: str, kind: str, read: Reader) -> tuple[RaplZone | None, str | None]:
    """The zone when it is a package (CPU) or dram subzone that reads; else why not, or
    (None, None) for a zone that is not ours to add (psys, core, uncore)."""
    try:
        name = read(os.path.join(path, "name"))
    except OSError as exc:
        return None, f"cannot read {path}/name: {exc.strerror or exc}"
    if (kind == CPU and not name.startswith("package")) or (kind == DRAM and name != "dram"):
        return None, None
    try:
        read(os.path.join(path, "energy_uj"))
        max_uj = int(read(os.path.join(path, "max_energy_range_uj")))
    except PermissionError:
        return None, f"{path}/energy_uj is not readable by this process; {PERMISSION_FIX}"
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path}: {exc}"
    return RaplZone(path, name, kind, max_uj), None


def wrapped_delta_uj(before_uj: int, after_uj: int, max_energy_range_uj: int) -> int:
    """µJ between two raw readings; a smaller second reading means the counter wrapped once."""
    if after_uj >= before_uj:
        return after_uj - before_uj
    return max_energy_range_uj - before_uj + after_uj


class HostEnergy:
    """Unwrapped totals of a node's RAPL zones. Thread-safe: the sampling thread and the
    window edges read through the same object, so every wrap is seen by the next read."""

    def __init__(self, root: str = POWERCAP_ROOT, read: Reader = read_text) -> None:
        self._read = read
        self.zones, self.unavailable_reason = discover(root, read)
        self._lock = threading.Lock()
        self._raw: dict[str, int] = {}
        self._totals: dict[str, int] = {z.path: 0 for z in self.zones}
        self._failures: dict[str, int] = {z.path: 0 for z in self.zones}

    @property
    def source(self) -> str | None:
        """`rapl:<kinds>` naming what the host figure covers, or None without zones."""
        if not self.zones:
            return None
        kinds = "+".join(k for k in ("package", DRAM)
                         if any(z.kind == (CPU if k == "package" else DRAM) for z in self.zones))
        return f"{SOURCE_RAPL}:{kinds}"

    def read(self, t_s: float) -> HostCounters:
        """Every zone's counter now, None for a zone that cannot be read."""
        totals: dict[str, int | None] = {}
        with self._lock:
            for zone in self.zones:
                try:
                    raw = int(self._read(os.path.join(zone.path, "energy_uj")))
                except (OSError, ValueError):
                    self._failures[zone.path] += 1
                    self._raw.pop(zone.path, None)
                    totals[zone.path] = None
                    continue
                last = self._raw.get(zone.path)
                if last is not None:
                    self._totals[zone.path] += wrapped_delta_uj(last, raw, zone.max_energy_range_uj)
                self._raw[zone.path] = raw
                totals[zone.path] = self._totals[zone.path]
            return HostCounters(t_s, totals, dict(self._failures))

    def window(self, start: HostCounters | None, end: HostCounters | None) -> HostWindow:
        """Energy between two reads, per kind; a kind whose zone failed at an edge or between
        them (vanished, became unreadable: wraps may have been missed) is null, with why."""
        if not self.zones or start is None or end is None:
            return HostWindow(None, None, None, self.unavailable_reason
                              or "host counters were not read at the window's edges")
        energies: dict[str, float | None] = {}
        reasons = []
        for kind in (CPU, DRAM):
            zones = [z for z in self.zones if z.kind == kind]
            deltas = [_delta(start, end, z.path) for z in zones]
            lost = [z.path for z, d in zip(zones, deltas) if d is None]
            energies[kind] = (
                sum(d for d in deltas if d is not None) / 1e6 if zones and not lost else None
            )
            if not zones:
                reasons.append(f"no {kind} zone on this node (AMD packages expose none)")
            elif lost:
                reasons.append(f"{', '.join(lost)} vanished or could not be read during the window")
        cpu_j, dram_j = energies[CPU], energies[DRAM]
        return HostWindow(cpu_j, dram_j, self.source if cpu_j is not None else None,
                          "; ".join(reasons) or None)


def _delta(start: HostCounters, end: HostCounters, path: str) -> int | None:
    """µJ of one zone between two reads; None when it failed at either or in between."""
    before, after = start.totals_uj.get(path), end.totals_uj.get(path)
    if before is None or after is None or start.failures.get(path) != end.failures.get(path):
        return None
    return after - before


def _kind_total_uj(counters: HostCounters, paths: list[str]) -> int | None:
    total = 0
    for path in paths:
        value = counters.totals_uj.get(path)
        if value is None:
            return None
        total += value
    return total if paths else None


def host_rows(
    zones: list[RaplZone], samples: list[HostCounters], since_s: float | None = None
) -> list[dict[str, Any]]:
    """The host's samples as timeseries rows with a null gpu_uuid (so no GPU sum takes them
    in): per kind, power over the interval since the previous sample and energy cumulative
    since the first (null where a zone did not read)."""
    paths = {kind: [z.path for z in zones if z.kind == kind] for kind in (CPU, DRAM)}

    rows = []
    for before, now in zip([None, *samples], samples):
        row: dict[str, Any] = {"gpu_uuid": None, "t_s": now.t_s}
        for kind in paths:
            first, end = _kind_total_uj(samples[0], paths[kind]), _kind_total_uj(now, paths[kind])
            start = None if before is None else _kind_total_uj(before, paths[kind])
            dt_s = None if before is None else now.t_s - before.t_s
            row[f"{kind}_energy_j"] = None if first is None or end is None else (end - first) / 1e6
            row[f"{kind}_power_w"] = (None if start is None or end is None or not dt_s
                                      else (end - start) / 1e6 / dt_s)
        if since_s is None or now.t_s >= since_s:
            rows.append(row)
    return rows


def host_status(root: str = POWERCAP_ROOT, read: Reader = read_text) -> dict[str, object]:
    """What `lem-ray doctor` tells per node: the readable zones, or why none, and the fix."""
    zones, reason = discover(root, read)
    fix = None
    if reason is not None:
        fix = PERMISSION_FIX if "not readable" in reason else MISSING_FIX
    return {"zones": [f"{os.path.basename(z.path)} ({z.name})" for z in zones],
            "reason": reason, "fix": fix}
