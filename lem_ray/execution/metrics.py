"""A campaign on Ray's own metrics (`ray.util.metrics`), where Ray's dashboard and Prometheus
already look: each node's metrics agent exports them, so lem-ray runs no server of its own.

The samplers publish power and temperature per GPU; the driver publishes runs by state, the
energy of each finished run and GPU-seconds by phase. Names and tags: docs/cluster.md. Nothing
is created or published with `execution.telemetry.ray_metrics: false`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ray.util.metrics import Counter, Gauge

from lem_ray.records import RunAttempt
from lem_ray.telemetry.nvml import GpuSample

if TYPE_CHECKING:
    from lem_ray.execution.driver.completion import Progress
    from lem_ray.execution.driver.dispatch import Dispatcher
    from lem_ray.results.rows import RunRows

GPU_PUBLISH_S = 1.0
"""At most one value per GPU per second, whatever the sample interval: a gauge is scraped
every few seconds, and the sampling thread stays as cheap as it was."""
DRIVER_PUBLISH_S = 5.0
RUN_ENERGY_KEEP_S = 60.0
RUN_TAGS = ("campaign_name", "experiment_id", "run_id")
GPU_TAGS = ("node_ip", "gpu_uuid", *RUN_TAGS)


def run_tags(ids: RunAttempt) -> dict[str, str]:
    """The tags a run's GPU series carry: the same ids as its rows in the results."""
    return {"campaign_name": ids.campaign_name, "experiment_id": ids.key.experiment_id,
            "run_id": ids.run_id}


class GpuPublisher:
    """The sampler's `on_sample` hook: sets the power and temperature gauges of the run in
    progress, none between runs. Ray drops a gauge not set for two export intervals, so a
    finished run's series leaves the endpoint about 20 s after its run ends."""

    def __init__(self, node_ip: str) -> None:
        self.node_ip = node_ip
        self.power_w = Gauge(
            "lem_ray_gpu_power_w",
            "Instant power of a GPU running a lem-ray run, W",
            tag_keys=GPU_TAGS,
        )
        self.temperature_c = Gauge(
            "lem_ray_gpu_temperature_c",
            "Temperature of a GPU running a lem-ray run, C",
            tag_keys=GPU_TAGS,
        )
        self.tags: dict[str, str] | None = None
        self.published_s: dict[str, float] = {}

    def begin(self, tags: dict[str, str]) -> None:
        """Publish the samples from now on, under a run's tags."""
        self.tags = {**tags, "node_ip": self.node_ip}
        self.published_s = {}

    def end(self) -> None:
        """Stop publishing until the next begin()."""
        self.tags = None

    def __call__(self, gpu_uuid: str, sample: GpuSample) -> None:
        """Set the gauges from one sample, at most every GPU_PUBLISH_S per GPU."""
        tags = self.tags
        if (
            tags is None
            or sample.t_s - self.published_s.get(gpu_uuid, float("-inf")) < GPU_PUBLISH_S
        ):
            return
        self.published_s[gpu_uuid] = sample.t_s
        tags = {**tags, "gpu_uuid": gpu_uuid}
        if sample.power_w is not None:
            self.power_w.set(sample.power_w, tags=tags)
        if sample.temperature_c is not None:
            self.temperature_c.set(sample.temperature_c, tags=tags)


class CampaignGauges:
    """The driver's figures: runs by state and GPU-seconds set from the Progress and the GPU
    ledger every few seconds; each finished run's energy as it is stored."""

    def __init__(self, campaign_name: str) -> None:
        self.campaign = {"campaign_name": campaign_name}
        self.runs = Gauge("lem_ray_runs", "This driver session's runs by state",
                          tag_keys=("campaign_name", "state"))
        self.gpu_seconds = Gauge(
            "lem_ray_gpu_seconds",
            "GPU-seconds by phase over the cluster's GPUs, this driver session",
            tag_keys=("campaign_name", "phase"),
        )
        self.run_energy_j = Gauge("lem_ray_run_energy_j",
                                  "Energy of a finished run's measured window (raw), J",
                                  tag_keys=RUN_TAGS)
        self.energy_j = Counter("lem_ray_energy_j",
                                "Energy of the finished runs' measured windows (raw), J",
                                tag_keys=("campaign_name", "experiment_id"))
        self.lock = threading.Lock()
        self.recent: dict[tuple[str, str], tuple[float, float]] = {}
        """(experiment_id, run_id) -> (energy_j, when it finished): re-set until
        RUN_ENERGY_KEEP_S."""

    def progress(self, progress: Progress) -> None:
        """Set the runs-by-state gauge from the driver's progress."""
        with progress.lock:
            done, failed, running, total = (
                progress.done,
                progress.failed,
                progress.running,
                progress.total,
            )
        states = {"pending": total - done - running, "running": running, "ok": done - failed,
                  "failed": failed}
        for state, count in states.items():
            self.runs.set(count, tags={**self.campaign, "state": state})

    def gpu_time(self, seconds: dict[str, float]) -> None:
        """Set the GPU-seconds gauge, by phase."""
        for phase, gpu_s in seconds.items():
            self.gpu_seconds.set(gpu_s, tags={**self.campaign, "phase": phase})

    def finished(self, experiment: dict[str, Any]) -> None:
        """A stored attempt's row; one without energy (CPU, failed) publishes nothing."""
        if experiment.get("energy_j") is None:
            return
        energy_j, experiment_id = float(experiment["energy_j"]), experiment["experiment_id"]
        self.energy_j.inc(energy_j, tags={**self.campaign, "experiment_id": experiment_id})
        with self.lock:
            self.recent[(experiment_id, experiment["run_id"])] = (energy_j, time.monotonic())
        self.run_energies()

    def run_energies(self) -> None:
        """A gauge not set again leaves the endpoint after two of Ray's export intervals: each
        finished run's stays RUN_ENERGY_KEEP_S, for a few scrapes, and then goes."""
        now_s = time.monotonic()
        with self.lock:
            self.recent = {k: v for k, v in self.recent.items() if now_s - v[1] < RUN_ENERGY_KEEP_S}
            recent = dict(self.recent)
        for (experiment_id, run_id), (energy_j, _) in recent.items():
            self.run_energy_j.set(energy_j, tags={**self.campaign, "experiment_id": experiment_id,
                                                  "run_id": run_id})


@contextmanager
def publishing(dispatcher: Dispatcher) -> Iterator[None]:
    """While the dispatcher runs: its progress and GPU-seconds every few seconds from a
    thread of the driver, and each finished run through its reporter."""
    if not dispatcher.execution.telemetry.ray_metrics:
        yield
        return
    gauges = CampaignGauges(dispatcher.plan.name)
    reporter = dispatcher.completion.reporter

    def report(progress: Progress, rows: RunRows | None) -> None:
        if rows is not None:
            gauges.finished(rows.experiment)
        gauges.progress(progress)
        if reporter is not None:
            reporter(progress, rows)

    def publish() -> None:
        gauges.progress(dispatcher.progress)
        gauges.gpu_time(dispatcher.ledger.seconds(time.time()))
        gauges.run_energies()

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(DRIVER_PUBLISH_S):
            publish()

    dispatcher.completion.reporter = report
    publish()
    thread = threading.Thread(target=loop, name="lem-ray-metrics", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        publish()
        dispatcher.completion.reporter = reporter
