"""Which campaign a results directory belongs to (campaign.json, or an older directory's
manifest), and the refusals of a directory a campaign cannot use, before Ray starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lem_ray.errors import ConfigError
from lem_ray.results import journal, ownership
from lem_ray.results.ownership import (
    OWNER_FILE,
    Owner,
    check_results_dir,
    claim,
    grid_fingerprint,
    read_owner,
)
from tests.fakes.synthetic_results import write_legacy_manifest


def test_the_fingerprint_tells_grids_apart_not_orders() -> None:
    one = grid_fingerprint(["b", "a", "c"], 3)
    assert one == grid_fingerprint(["a", "b", "c"], 3)
    assert len(one) == 16 and int(one, 16) >= 0
    assert one != grid_fingerprint(["a", "b", "c"], 2), "cycles are part of the plan"
    assert one != grid_fingerprint(["a", "b"], 3)
    assert one != grid_fingerprint(["a", "b", "c", "c"], 3)


def test_claim_records_the_owner_and_updates_it(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert read_owner(out) is None, "nothing there yet"
    claim(out, Owner("alpha", "f" * 16))
    assert read_owner(out) == Owner("alpha", "f" * 16)
    claim(out, Owner("alpha", "0" * 16))
    record = json.loads((out / OWNER_FILE).read_text())
    assert record["grid_fingerprint"] == "0" * 16 and record["campaign_name"] == "alpha"
    assert isinstance(record["updated_at"], float)
    assert sorted(p.name for p in out.iterdir()) == [OWNER_FILE], "no temp file left"


def test_an_older_directory_is_owned_by_its_manifests_campaign(tmp_path: Path) -> None:
    write_legacy_manifest(tmp_path, "legacy")
    assert read_owner(tmp_path) == Owner("legacy", "")
    (tmp_path / OWNER_FILE).write_text(json.dumps({"campaign_name": "new"}))
    assert read_owner(tmp_path) == Owner("new", ""), "campaign.json first; fingerprint optional"


@pytest.mark.parametrize(("content", "kind"), [
    ('{"campaign_name": "x", "grid', "JSONDecodeError"),
    ('{"grid_fingerprint": "0"}', "KeyError"),
    ("[1, 2]", "TypeError"),
    (b"\xff\xfe", "UnicodeDecodeError"),
])
def test_a_damaged_owner_file_is_one_clear_error(tmp_path: Path, content: str | bytes,
                                                 kind: str) -> None:
    path = tmp_path / OWNER_FILE
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as info:
        read_owner(tmp_path)
    assert str(info.value) == (f"{tmp_path}: cannot read {OWNER_FILE} ({kind}); it records "
                               "which campaign owns the directory: restore it, or --fresh to "
                               "move the directory aside")
    with pytest.raises(ConfigError, match=kind):
        check_results_dir(tmp_path, "x")
    check_results_dir(tmp_path, "x", fresh=True)


def test_another_campaigns_directory_is_refused_unless_fresh(tmp_path: Path) -> None:
    claim(tmp_path, Owner("alpha", "0" * 16))
    check_results_dir(tmp_path, "alpha")
    with pytest.raises(ConfigError) as info:
        check_results_dir(tmp_path, "beta")
    assert str(info.value) == (f"{tmp_path}: belongs to campaign 'alpha', not 'beta': choose "
                               "another results directory, or --fresh to move the old one aside")
    check_results_dir(tmp_path, "beta", fresh=True)
    check_results_dir(tmp_path / "new" / "deeper", "beta")


def test_a_directory_that_cannot_be_one_is_refused_even_fresh(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for fresh in (False, True):
        with pytest.raises(ConfigError, match="the results directory is a file, not a directory"):
            check_results_dir(taken, "c", fresh)
        with pytest.raises(ConfigError) as info:
            check_results_dir(taken / "sub" / "dir", "c", fresh)
        assert f"{taken} is a file, so the results directory cannot be created there" in str(
            info.value)
    with pytest.raises(ConfigError, match="cannot use this path: File name too long"):
        check_results_dir(tmp_path / ("x" * 300), "c")


def test_a_directory_without_write_permission_is_refused(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked where the directory would be created: the nearest existing folder up the path
    (os.access is stubbed for it: the tests may run as root, whom no mode stops)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    asked: list[tuple[str, int]] = []

    def access(path: os.PathLike | str, mode: int) -> bool:
        asked.append((str(path), mode))
        return str(path) != str(locked) and real(path, mode)

    monkeypatch.setattr(ownership.os, "access", access)
    with pytest.raises(ConfigError, match=f"no permission to write in {locked}"):
        check_results_dir(locked / "a" / "b", "c")
    assert asked == [(str(locked), os.W_OK | os.X_OK)]
    check_results_dir(tmp_path / "open", "c")


def test_an_object_store_location_is_checked_through_its_filesystem(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No local path checks there: a location that is an object (a file) is refused, and the
    owner is read through the store's filesystem (a local subtree stands in for the bucket)."""
    import pyarrow.fs as pafs

    bucket = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    for module in (ownership, journal):
        monkeypatch.setattr(module, "resolve", lambda text: (bucket, str(text).split("://")[1]))
    (tmp_path / "taken").write_text("an object")
    with pytest.raises(ConfigError, match="the results location is a file, not a directory"):
        check_results_dir("s3://taken", "c")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / OWNER_FILE).write_text(json.dumps({"campaign_name": "alpha"}))
    check_results_dir("s3://results", "alpha")
    with pytest.raises(ConfigError, match="belongs to campaign 'alpha', not 'beta'"):
        check_results_dir("s3://results", "beta")
