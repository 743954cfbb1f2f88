"""Mutation run: small deliberate breakages of the energy, validity, manifest and retry code,
each checked with the fast tests that cover that module. A mutant the tests let through
("survived") is a breakage nobody would notice; docs/testing.md lists the survivors.

    python -m tests.mutate                      # every target, summary + survivors
    python -m tests.mutate --only validity      # targets whose path contains "validity"
    python -m tests.mutate --list               # the mutants, without running anything

The mutants are generated from the source's AST, in a fixed order, so a run is reproducible.
Each runs in a forked child of this process (test modules imported once, up front): the
child swaps the mutated module in (function code replaced in place, so names imported
elsewhere see it too), then runs the target's tests with `pytest -x`; a failure, an error or
a timeout kills the mutant. Files are never touched. Not part of CI: it takes minutes.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import signal
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    path: str
    functions: tuple[str, ...] | None  # qualified names to mutate; None: the whole module
    tests: tuple[str, ...]


ENERGY_TESTS = ("tests/measure/test_energy_path.py",)
PROTOCOL_TESTS = ("tests/measure/test_measure_protocol.py", *ENERGY_TESTS)
TARGETS = (
    Target("lem_ray/telemetry/energy.py", None,
           ("tests/telemetry/test_telemetry.py", *ENERGY_TESTS)),
    Target("lem_ray/measure/energy.py", None,
           ("tests/telemetry/test_telemetry.py", "tests/measure/test_measurement.py",
            *PROTOCOL_TESTS)),
    Target("lem_ray/measure/protocol.py",
           ("MeasurementProtocol.prepare", "MeasurementProtocol.measure",
            "MeasurementProtocol._window", "MeasurementProtocol._prefill", "figures_of"),
           PROTOCOL_TESTS),
    Target("lem_ray/results/metrics.py", None,
           ("tests/measure/test_measurement.py", *ENERGY_TESTS)),
    Target("lem_ray/results/validity.py", None,
           ("tests/measure/test_measurement.py", "tests/backends/test_steady_state.py",
            *ENERGY_TESTS)),
    Target("lem_ray/results/slo.py", None, ("tests/results/test_slo.py", *ENERGY_TESTS)),
    Target("lem_ray/results/manifest.py", None,
           ("tests/results/test_manifest.py",
            "tests/cli/test_hostile.py::test_status_on_a_damaged_manifest")),
    Target("lem_ray/results/journal.py", ("apply", "_journal_names", "_records", "read_state"),
           ("tests/results/test_manifest.py", "tests/results/test_manifest_journal.py")),
    Target("lem_ray/results/rows.py", ("_baseline", "_conditions", "ok_rows"),
           (*ENERGY_TESTS, "tests/results/test_rows.py")),
    Target("lem_ray/execution/worker/runs.py", ("WorkerRuns.run", "WorkerRuns._measure"),
           ENERGY_TESTS),
    Target("lem_ray/execution/driver/completion.py", ("Completion.finish", "Completion.unstored",
                                                "Completion.conclude", "Completion.interrupted"),
           ("tests/execution/test_dispatch.py",)),
    Target("lem_ray/execution/driver/dispatch.py", ("Dispatcher._interrupt",),
           ("tests/execution/test_dispatch.py",)),
    Target("lem_ray/execution/driver/slot_pool.py", ("SlotPool.stop_running",),
           ("tests/execution/test_dispatch.py",)),
    Target("lem_ray/execution/driver/run_queue.py", ("RunQueue.retry",),
           ("tests/execution/test_dispatch.py",)),
    Target("lem_ray/execution/driver/writes.py", None, ("tests/execution/test_dispatch.py",)),
    Target("lem_ray/results/ownership.py", None,
           ("tests/results/test_ownership.py",
            "tests/cli/test_hostile.py::test_another_campaigns_results_dir_is_refused")),
    Target("lem_ray/results/summary.py", None,
           ("tests/results/test_report.py::test_summary_counts_only_the_valid_latest_cycles",
            "tests/results/test_renamed_columns.py")),
    Target("lem_ray/measure/warmup.py", None, ("tests/measure/test_measurement.py",)),
    Target("lem_ray/execution/worker/engines.py", None,
           ("tests/execution/test_engines.py", "tests/execution/test_worker_heap.py")),
    Target("lem_ray/telemetry/sampler.py",
           ("EnergySampler._read_counters", "EnergySampler.begin", "EnergySampler.end",
            "EnergySampler._window_series", "EnergySampler._integrate"),
           ("tests/telemetry/test_telemetry.py", *ENERGY_TESTS)),
    Target("lem_ray/results/store.py", None,
           ("tests/results/test_store.py", "tests/results/test_renamed_columns.py",
            "tests/cli/test_hostile.py::test_report_reads_around_damaged_files")),
)

# Tests whose outcome hangs on wall-clock time (sleeps measured back) fail now and then on a
# loaded machine; a mutant "killed" by one of those would be killed by chance, so they sit out.
WALL_CLOCK_TESTS = "not cv_warmup and not background_thread"

SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
              ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot,
            ast.IsNot: ast.Is}
SWAP_NAME = {"max": "min", "min": "max", "any": "all", "all": "any"}


@dataclass(frozen=True)
class Mutant:
    target: Target
    index: int  # position of the mutated node in the module's walk order
    kind: str
    line: int
    description: str


def _skipped(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, decorators, log calls."""
    skip: set[int] = set()

    def drop(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                drop(body[0])
            if not isinstance(node, ast.Module):
                for d in node.decorator_list:
                    drop(d)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                drop(node.returns)
        if isinstance(node, ast.arg):
            drop(node.annotation)
        if isinstance(node, ast.AnnAssign):
            drop(node.annotation)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "logger"):
            drop(node)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            drop(node)
    return skip


def _in_scope(tree: ast.Module, functions: tuple[str, ...] | None) -> set[int]:
    """ids of the nodes inside the named functions (every node when functions is None)."""
    if functions is None:
        return {id(n) for n in ast.walk(tree)}
    scope: set[int] = set()

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and f"{prefix}{node.name}" in functions):
                scope.update(id(n) for n in ast.walk(node))

    visit(tree.body, "")
    return scope


def _mutations(node: ast.AST) -> Iterator[tuple[str, str, Callable[[ast.AST], None]]]:
    """(kind, description, apply) for each breakage of this one node."""
    if isinstance(node, ast.BinOp) and type(node.op) in SWAP_BINOP:
        new = SWAP_BINOP[type(node.op)]
        yield ("binop", f"{type(node.op).__name__} -> {new.__name__}",
               lambda n: setattr(n, "op", new()))
    if isinstance(node, ast.AugAssign) and type(node.op) in SWAP_BINOP:
        new = SWAP_BINOP[type(node.op)]
        yield ("augassign", f"{type(node.op).__name__}= -> {new.__name__}=",
               lambda n: setattr(n, "op", new()))
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in SWAP_CMP:
                new = SWAP_CMP[type(op)]

                def swap(n: ast.AST, i: int = i, new: type = new) -> None:
                    n.ops[i] = new()
                yield "compare", f"{type(op).__name__} -> {new.__name__}", swap
    if isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        yield ("boolop", f"{type(node.op).__name__} -> {new.__name__}",
               lambda n: setattr(n, "op", new()))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        yield "unary", f"drop {type(node.op).__name__}", lambda n: setattr(n, "op", ast.UAdd())
    if (isinstance(node, ast.Constant) and type(node.value) in (int, float)
            and not isinstance(node.value, bool)):
        yield ("number", f"{node.value!r} -> {node.value + 1!r}",
               lambda n: setattr(n, "value", n.value + 1))
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield ("bool", f"{node.value} -> {not node.value}",
               lambda n: setattr(n, "value", not n.value))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SWAP_NAME:
        new_name = SWAP_NAME[node.func.id]
        yield "call", f"{node.func.id}() -> {new_name}()", lambda n: setattr(n.func, "id", new_name)
    if isinstance(node, ast.If):
        yield ("if", "condition negated",
               lambda n: setattr(n, "test", ast.UnaryOp(ast.Not(), n.test)))
    if isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        yield "return", "returns None", lambda n: setattr(n, "value", ast.Constant(None))
    if isinstance(node, (ast.Break, ast.Continue)):
        other = ast.Continue if isinstance(node, ast.Break) else ast.Break
        yield ("loop", f"{type(node).__name__} -> {other.__name__}",
               lambda n: setattr(n, "__class__", other))


def _walk(tree: ast.AST) -> list[ast.AST]:
    return list(ast.walk(tree))


def mutants(target: Target) -> list[Mutant]:
    tree = ast.parse((ROOT / target.path).read_text())
    skip, scope = _skipped(tree), _in_scope(tree, target.functions)
    found = []
    for index, node in enumerate(_walk(tree)):
        if id(node) in skip or id(node) not in scope:
            continue
        for kind, description, _ in _mutations(node):
            found.append(Mutant(target, index, kind, getattr(node, "lineno", 0), description))
    return found


def mutated_source(mutant: Mutant) -> str:
    tree = ast.parse((ROOT / mutant.target.path).read_text())
    node = _walk(tree)[mutant.index]
    for kind, description, apply in _mutations(node):
        if (kind, description) == (mutant.kind, mutant.description):
            apply(node)
            return ast.unparse(ast.fix_missing_locations(tree))
    raise AssertionError(f"mutant {mutant} not found again")


def _module_name(path: str) -> str:
    return path[:-len(".py")].replace("/", ".")


def _swap_in(module_name: str, source: str) -> None:
    """Make the already imported module behave as `source`: every function's code is replaced
    in place (so `from module import f` elsewhere sees the mutant too), other globals rebound."""
    module = importlib.import_module(module_name)
    fresh: dict = {"__name__": module_name, "__file__": module.__file__}
    exec(compile(source, module.__file__, "exec"), fresh)

    def patch(old: object, new: object) -> bool:
        if isinstance(old, types.FunctionType) and isinstance(new, types.FunctionType):
            try:
                old.__code__, old.__defaults__, old.__kwdefaults__ = (
                    new.__code__, new.__defaults__, new.__kwdefaults__)
                return True
            except ValueError:  # a different closure: fall back to rebinding the name
                return False
        return False

    for name, new in fresh.items():
        old = module.__dict__.get(name)
        if isinstance(old, type) and isinstance(new, type):
            for attr, value in vars(new).items():
                target = vars(old).get(attr)
                if isinstance(value, property) and isinstance(target, property):
                    patch(target.fget, value.fget)
                else:
                    patch(target, value)
        elif not patch(old, new) and not isinstance(new, (types.ModuleType, type)) \
                and not name.startswith("__"):
            setattr(module, name, new)


def run_tests(target: Target, source: str | None, timeout_s: float) -> tuple[str, str]:
    """Run the target's tests in a forked child of this process (imports already paid for),
    with the module swapped for `source` (None: unchanged). ("passed" | "failed" | "timeout",
    the tail of pytest's output)."""
    import pytest

    with tempfile.TemporaryFile(mode="w+") as log:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 3
            try:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                if source is not None:
                    _swap_in(_module_name(target.path), source)
                code = pytest.main(["-x", "-q", "-p", "no:cacheprovider",
                                    "-m", "not slow and not gpu", "-k", WALL_CLOCK_TESTS,
                                    "-o", "addopts=", "--rootdir", str(ROOT),
                                    *(str(ROOT / t) for t in target.tests)])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(int(code))
        deadline = time.monotonic() + timeout_s
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "timeout", ""
            time.sleep(0.02)
        log.seek(0)
        output = log.read()[-3000:]
    return ("passed" if os.waitstatus_to_exitcode(status) == 0 else "failed"), output


def _warm_up(targets: list[Target]) -> None:
    """Import every test module once here, so each forked run only runs the tests."""
    import pytest

    with open(os.devnull, "w") as sink:
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                         *sorted({str(ROOT / t) for target in targets for t in target.tests})])
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the targets whose path contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--json", type=Path, help="also write every mutant's outcome to this file")
    args = parser.parse_args()
    targets = [t for t in TARGETS if not args.only or args.only in t.path]
    every = [m for t in targets for m in mutants(t)]
    if args.list:
        for m in every:
            print(f"{m.target.path}:{m.line} {m.kind}: {m.description}")
        print(f"{len(every)} mutants")
        return 0
    _warm_up(targets)
    outcomes = []
    for target in targets:
        started = time.monotonic()
        baseline, output = run_tests(target, None, 600)
        if baseline != "passed":
            print(f"{target.path}: its tests fail without any mutant ({baseline}); "
                  f"fix that first:\n{output}")
            return 1
        timeout_s = max(20.0, 5 * (time.monotonic() - started))
        for m in (m for m in every if m.target == target):
            result, output = run_tests(target, mutated_source(m), timeout_s)
            outcome = "survived" if result == "passed" else "killed"
            by = next((line.split(" - ")[0] for line in output.splitlines()
                       if line.startswith(("FAILED ", "ERROR "))), result)
            outcomes.append({"path": m.target.path, "line": m.line, "kind": m.kind,
                             "mutation": m.description, "outcome": outcome, "by": by})
            print(f"{outcome:8} {m.target.path}:{m.line} {m.kind}: {m.description}  [{by}]",
                  flush=True)
        after, output = run_tests(target, None, 600)
        if after != "passed":
            print(f"{target.path}: its tests fail after the run without any mutant ({after}): "
                  f"its kills are not to be trusted:\n{output}")
            return 1
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=1))
    print()
    for target in targets:
        mine = [o for o in outcomes if o["path"] == target.path]
        survived = sum(o["outcome"] == "survived" for o in mine)
        print(f"{target.path}: {len(mine)} mutants, {len(mine) - survived} killed, "
              f"{survived} survived")
    survived = sum(o["outcome"] == "survived" for o in outcomes)
    print(f"total: {len(outcomes)} mutants, {len(outcomes) - survived} killed, {survived} survived")
    return 0


if __name__ == "__main__":
    sys.exit(main())
