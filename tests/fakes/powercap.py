"""A fake /sys/class/powercap tree, shaped as a two-package Intel server's: package zones with
dram and core subzones, and a psys zone that lem-ray must not add (it covers the platform)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MAX_UJ = 262_143_328_850
"""max_energy_range_uj of a Xeon package zone."""


class FakePowercap:
    def __init__(
        self, root: Path, packages: int = 1, dram: bool = True, start_uj: int = 10**9
    ) -> None:
        self.root = root
        self.counters: dict[str, int] = {}
        root.mkdir(parents=True, exist_ok=True)
        for n in range(packages):
            self._zone(f"intel-rapl:{n}", f"package-{n}", start_uj)
            if dram:
                self._zone(f"intel-rapl:{n}/intel-rapl:{n}:0", "dram", start_uj)
            self._zone(f"intel-rapl:{n}/intel-rapl:{n}:1", "core", start_uj)
        self._zone(f"intel-rapl:{packages}", "psys", start_uj)

    def _zone(self, rel: str, name: str, start_uj: int) -> None:
        path = self.root / rel
        path.mkdir(parents=True)
        (path / "name").write_text(f"{name}\n")
        (path / "max_energy_range_uj").write_text(f"{MAX_UJ}\n")
        self.counters[rel] = start_uj
        self._write(rel)

    def _write(self, rel: str) -> None:
        """Atomically, as sysfs reads are: a reader never sees half a number."""
        tmp = self.root / rel / ".energy_uj"
        tmp.write_text(f"{self.counters[rel]}\n")
        os.replace(tmp, self.root / rel / "energy_uj")

    def add(self, rel: str, joules: float) -> None:
        """The zone used `joules`; its counter wraps at MAX_UJ as the hardware's does."""
        if not (self.root / rel).exists():
            return
        self.counters[rel] = (self.counters[rel] + round(joules * 1e6)) % MAX_UJ
        self._write(rel)

    def set(self, rel: str, counter_uj: int) -> None:
        self.counters[rel] = counter_uj
        self._write(rel)

    def remove(self, rel: str) -> None:
        shutil.rmtree(self.root / rel)
