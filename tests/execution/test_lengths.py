"""Run lengths before a run: learned per experiment, else from the plan's decode steps at the
pace runs so far went; loads and worker starts added where a run will need them."""

from __future__ import annotations

import pytest

from lem_ray.config.campaign import ExecutionConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.driver.lengths import RunLengths, decode_steps
from lem_ray.execution.driver.run_queue import RunQueue, RunTask
from lem_ray.records import RunAttempt, RunKey
from tests.conftest import TINY_BASE


def config(**changes) -> ExperimentConfig:
    return ExperimentConfig.model_validate({**TINY_BASE, "backend": "pytorch", **changes})


def test_decode_steps_are_batches_times_output_tokens() -> None:
    assert decode_steps(config(max_output_tokens=8), 6) == 6 * 8
    assert decode_steps(config(max_output_tokens=8, pytorch={"batch_size": 4}), 6) == 2 * 8


def test_nothing_is_guessed_before_a_run_has_finished() -> None:
    lengths = RunLengths()
    assert lengths.estimate("e1", "A", 100, warm=True) is None
    assert lengths.cold("A") is None


def test_the_first_finished_run_calibrates_the_others_by_their_steps() -> None:
    lengths = RunLengths()
    lengths.finished("e1", "A", steps=100, run_s=7.0, load_s=2.0, reused=False)
    assert lengths.estimate("e1", "A", 100, warm=True) == pytest.approx(5.0)
    assert lengths.estimate("e2", "A", 300, warm=True) == pytest.approx(15.0)
    assert lengths.estimate("e2", "A", 300, warm=False) == pytest.approx(17.0)
    assert lengths.estimate("e3", "B", 50, warm=False) == pytest.approx(2.5 + 2.0), \
        "another engine: the pace and the load seen so far"
    assert lengths.estimate("e3", "B", 50, warm=False, new_worker=True) is None, \
        "no worker start timed yet"
    lengths.started(1.5)
    assert lengths.estimate("e3", "B", 50, warm=False, new_worker=True) == pytest.approx(6.0)
    assert lengths.cold("B") == pytest.approx(3.5)


def test_an_experiment_s_own_run_wins_and_a_reused_run_keeps_the_load_learned() -> None:
    lengths = RunLengths()
    lengths.finished("e1", "A", steps=100, run_s=7.0, load_s=2.0, reused=False)
    lengths.finished("e2", "A", steps=100, run_s=1.05, load_s=0.05, reused=True)
    assert lengths.estimate("e1", "A", 100, warm=True) == pytest.approx(5.0)
    assert lengths.estimate("e2", "A", 100, warm=True) == pytest.approx(1.0)
    assert lengths.load("A") == 2.0


def test_interleaved_cycles_go_longest_first_within_each_cycle() -> None:
    """Planned GPU-time = decode steps x GPUs; cycles keep their order."""
    shapes = {"short": config(max_output_tokens=8), "long": config(max_output_tokens=32),
              "wide": config(max_output_tokens=16, gpus_per_experiment=2)}
    runs = RunQueue(ExecutionConfig(), {name: ["p"] * 4 for name in shapes}, has_gpus=True)
    queue = [RunTask(RunAttempt("c", RunKey(name, cycle), 1), cfg, cfg.engine_key)
             for cycle in (1, 2) for name, cfg in shapes.items()]
    ordered = [(t.ids.key.cycle, t.ids.key.experiment_id) for t in runs.longest_first(queue)]
    assert ordered == [(1, "wide"), (1, "long"), (1, "short"), (2, "wide"), (2, "long"),
                       (2, "short")], "wide and long tie at 128: the larger first"
