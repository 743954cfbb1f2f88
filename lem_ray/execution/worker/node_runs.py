"""Which runs were active on a node when, so a run's host energy says whether it was shared.

The host counters (CPU package, DRAM) meter the whole node: when several workers of a
campaign run at once on one node, each window's host energy includes the others' work. A run
is active from the moment its worker takes it (before cooldown and baseline) until its worker
hands it back; loading and warmup load the host as much as measuring does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class _Activity:
    node_id: str
    start_s: float
    end_s: float | None = None


def overlaps(
    start_s: float, end_s: float | None, window_start_s: float, window_end_s: float
) -> bool:
    """An activity [start_s, end_s] (end None: still running) overlaps the window when it began
    before the window ended and had not ended before the window began."""
    return start_s < window_end_s and (end_s is None or end_s > window_start_s)


class NodeRuns:
    """Runs' activity per node, in epoch seconds of the nodes' clocks. Plain: the campaign's
    BaselineCache actor holds one, so every worker of the campaign reaches the same record."""

    def __init__(self) -> None:
        self._runs: dict[str, _Activity] = {}

    def started(self, node_id: str, token: str, t_s: float) -> None:
        """A run began on node_id at t_s."""
        self._runs[token] = _Activity(node_id, t_s)

    def ended(self, token: str, t_s: float) -> None:
        """A run ended at t_s; activity too old to matter is dropped."""
        if token in self._runs:
            self._runs[token].end_s = t_s
        self._prune()

    def sharing(self, node_id: str, token: str, window_start_s: float, window_end_s: float) -> int:
        """How many other runs were active on node_id during the window."""
        return sum(1 for other, a in self._runs.items()
                   if other != token and a.node_id == node_id
                   and overlaps(a.start_s, a.end_s, window_start_s, window_end_s))

    def active(self, node_id: str, token: str, t_s: float) -> int:
        """How many other runs are active on node_id at t_s (started by then, not ended)."""
        return sum(1 for other, a in self._runs.items()
                   if other != token and a.node_id == node_id and a.start_s <= t_s
                   and (a.end_s is None or a.end_s > t_s))

    def _prune(self) -> None:
        """Ended runs that no running run's windows can overlap any more (every later window
        lies inside a running run, which began after they ended)."""
        running = [a.start_s for a in self._runs.values() if a.end_s is None]
        oldest = min(running, default=float("inf"))
        self._runs = {t: a for t, a in self._runs.items() if a.end_s is None or a.end_s > oldest}


class CampaignRecord:
    """Idle baselines by GPU UUID (and of each node's host), kept for the whole campaign while
    workers come and go; with the runs active on each node, whose host energy they share.
    Plain: the campaign's BaselineCache actor is this class."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.node_runs = NodeRuns()

    def run_started(self, node_id: str, token: str, t_s: float) -> None:
        """A run began on a node (NodeRuns.started)."""
        self.node_runs.started(node_id, token, t_s)

    def run_ended(self, token: str, t_s: float) -> None:
        """A run ended (NodeRuns.ended)."""
        self.node_runs.ended(token, t_s)

    def sharing(self, node_id: str, token: str, start_s: float, end_s: float) -> int:
        """Runs that shared the node with this one's window (NodeRuns.sharing)."""
        return self.node_runs.sharing(node_id, token, start_s, end_s)

    def active(self, node_id: str, token: str, t_s: float) -> int:
        """Other runs active on the node at t_s (NodeRuns.active)."""
        return self.node_runs.active(node_id, token, t_s)

    def get(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        """The known baselines of these GPUs."""
        return {u: self.entries[u] for u in uuids if u in self.entries}

    def put(self, entries: dict[str, dict[str, Any]]) -> None:
        """Keep newly measured baselines."""
        self.entries.update(entries)
