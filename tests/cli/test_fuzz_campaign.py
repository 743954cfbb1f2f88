"""Seeded fuzzing of `lem-ray campaign FILE --dry-run`: valid campaign files mutated in types,
ranges, keys, structure, encodings and aliases. Whatever the file, the command ends with exit 0
or 2, never a traceback, a refusal is one line, and nothing is created.

In-process through click's CliRunner (a subprocess per case would cost a second each). A failing
case prints its seed and file, so `FUZZ_SEED=<seed> FUZZ_CASES=1` replays it alone.
"""

from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from lem_ray.cli.main import main
from tests.conftest import TINY_BASE

CASES = int(os.environ.get("FUZZ_CASES", "400"))
FIRST_SEED = int(os.environ.get("FUZZ_SEED", "0"))

VALID: dict[str, Any] = {
    "campaign_name": "fuzz",
    "base": {**TINY_BASE, "decoder": {"preset": "standard", "top_k": 20},
             "pytorch": {"batch_size": 2, "batching_strategy": "sorted"}},
    "grid": {
        "backends": ["pytorch", "vllm"],
        "shared": {"fp_precision": ["float16", "bfloat16"], "decoder.temperature": [0.5, 1.0]},
        "backend_overrides": {"pytorch": {"batch_size": [1, 4]},
                              "vllm": {"max_num_seqs": [8, 16]}},
    },
    "experiments": [
        {"backend": "pytorch", "prompts": {"source": "file", "path": "prompts.jsonl", "count": 3}},
        {"backend": "pytorch", "max_output_tokens": 4, "min_output_tokens": 0},
    ],
    "execution": {"cycles": 2, "structure": "shuffled", "seed": 7, "config_gap_s": 0.5,
                  "validity": {"min_window_s": 1.0}, "telemetry": {"sample_interval_ms": 50}},
    "output": {"results_dir": "out/fuzz"},
}

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63, 10**30, -(10**30), 0.5, -0.0, 1e-300, 1e308,
    float("nan"), float("inf"), float("-inf"), "", " ", "x" * 5000, "builtin:nope", "1", "true",
    "2020-02-30", "café", "\u0000", [], {}, [1, "a"], {"a": 1}, [[[[]]]], {"source": "file"},
    {"source": "synthetic", "count": 2**40}, "../../../etc/passwd", "s3://", "nope://x",
]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into the document, containers included."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


def _get(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _set(doc: Any, path: tuple, value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _change_type(rng: random.Random, doc: dict) -> None:
    _set(doc, rng.choice(_paths(doc)), copy.deepcopy(rng.choice(ODD_VALUES)))


def _change_range(rng: random.Random, doc: dict) -> None:
    numeric = [p for p in _paths(doc) if isinstance(_get(doc, p), (int, float))
               and not isinstance(_get(doc, p), bool)]
    path = rng.choice(numeric)
    value = _get(doc, path)
    _set(doc, path, rng.choice([0, -value, value * 10**rng.randint(1, 12), value + 0.5,
                                -(10**rng.randint(1, 20)), 1e-9]))


def _change_keys(rng: random.Random, doc: dict) -> None:
    path = rng.choice([p for p in _paths(doc) if isinstance(p[-1], str)])
    parent = _get(doc, path[:-1])
    key = path[-1]
    action = rng.choice(["drop", "typo", "add", "dotted"])
    if action == "drop":
        del parent[key]
    elif action == "typo":
        parent[key[:-1] + rng.choice("xyz_.") if key else "x"] = parent.pop(key)
    elif action == "add":
        parent[rng.choice(["extra", "_extends", "", "a.b.c", "grid"])] = rng.choice(ODD_VALUES)
    else:
        parent[f"{key}.{rng.choice(['x', 'source', 'count', ''])}"] = [rng.choice(ODD_VALUES)]


def _change_structure(rng: random.Random, doc: dict) -> None:
    path = rng.choice(_paths(doc))
    value = _get(doc, path)
    _set(doc, path, rng.choice([[value], {"value": value}, [value, value], [], {},
                                json.dumps(value, default=str)]))


MUTATIONS: list[Callable[[random.Random, dict], None]] = [
    _change_type, _change_range, _change_keys, _change_structure,
]


def _text_mutation(rng: random.Random, text: str) -> bytes:
    """Mutations of the file itself: encodings, duplicates, aliases, truncation."""
    lines = text.splitlines()
    action = rng.choice(["latin1", "utf16", "bom", "nul", "duplicate", "truncate", "alias_bomb",
                         "alias_ok", "tabs", "recursive"])
    if action == "latin1":
        return (text + "# café\n").encode("latin-1")
    if action == "utf16":
        return text.encode("utf-16")
    if action == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if action == "nul":
        cut = rng.randrange(len(text))
        return (text[:cut] + "\x00" + text[cut:]).encode()
    if action == "duplicate":
        i = rng.randrange(len(lines))
        return "\n".join([*lines[: i + 1], lines[i], *lines[i + 1:]]).encode()
    if action == "truncate":
        return text[: rng.randrange(len(text))].encode()
    if action == "alias_bomb":
        depth, width = rng.randint(2, 9), rng.randint(2, 12)
        bomb = [f"b0: &b0 [{', '.join(['x'] * width)}]"]
        bomb += [f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * width)}]" for i in range(1, depth)]
        return ("\n".join(bomb) + "\n" + text).encode()
    if action == "alias_ok":
        return text.replace("base:", "base: &base", 1).replace(
            "experiments:", "experiments:\n- *base", 1).encode()
    if action == "tabs":
        return text.replace("  ", "\t", rng.randint(1, 5)).encode()
    return ("loop: &loop {self: *loop}\n" + text).encode()


def _case(seed: int) -> bytes:
    rng = random.Random(seed)
    doc = copy.deepcopy(VALID)
    for _ in range(rng.choice([1, 1, 2, 3])):
        rng.choice(MUTATIONS)(rng, doc)
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    return _text_mutation(rng, text) if rng.random() < 0.25 else text.encode()


def test_fuzz_dry_run(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"prompt number {i}"}) + "\n" for i in range(4)))
    path = tmp_path / "campaign.yaml"
    runner = CliRunner()
    outcomes = {0: 0, 2: 0}
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        path.write_text(yaml.safe_dump(VALID, sort_keys=False))
        first = runner.invoke(main, ["campaign", str(path), "--dry-run", "--json"],
                              env={"RAY_ADDRESS": ""}, prog_name="lem-ray")
        assert first.exit_code == 0, f"the unmutated campaign is valid: {first.output}"
        before = sorted(str(p) for p in tmp_path.rglob("*"))
        for seed in range(FIRST_SEED, FIRST_SEED + CASES):
            content = _case(seed)
            path.write_bytes(content)
            result = runner.invoke(main, ["campaign", str(path), "--dry-run", "--json"],
                                   env={"RAY_ADDRESS": ""}, prog_name="lem-ray")
            shown = f"seed {seed}, file:\n{content[:1500]!r}\noutput:\n{result.output[-1500:]}"
            assert result.exit_code in (0, 2), shown
            assert "Traceback" not in result.output, shown
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                f"{shown}\n{result.exception!r}")
            if result.exit_code == 2:
                lines = result.stderr.splitlines()
                assert len(lines) == 1 and lines[0].startswith("lem-ray: error: "), shown
                assert len(lines[0]) < 1000, shown
                assert result.stdout == "", shown
            else:
                assert json.loads(result.stdout)["counts"]["runs"] >= 1, shown
            assert sorted(str(p) for p in tmp_path.rglob("*")) == before, f"created: {shown}"
            outcomes[result.exit_code] += 1
    finally:
        os.chdir(old)
    print(f"fuzz: {CASES} cases from seed {FIRST_SEED}: {outcomes[0]} accepted, "
          f"{outcomes[2]} refused")
    assert outcomes[2] > CASES // 4, "the mutations do reach the refusals"
