"""Atomic writes: complete or absent, with the permissions an ordinary write would give."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from nucleisam.errors import NucleisamError
from nucleisam.utils.atomic import atomic_output, ensure_output_dir, write_json_atomic, write_text_atomic


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process umask after a test that sets it."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half-written")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_unwritable_output_dir_is_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NucleisamError, match=r"\(out\)"):
        ensure_output_dir(blocker / "sub")


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_new_files_get_the_umask_not_0600(tmp_path: Path, umask: None, mask: int, expected: int) -> None:
    os.umask(mask)
    assert mode(write_text_atomic(tmp_path / "a.csv", "x\n")) == expected
    with atomic_output(tmp_path / "b.tif") as tmp:  # writers that take a file name
        tmp.write_bytes(b"II*\x00")
    assert mode(tmp_path / "b.tif") == expected


def test_overwrite_keeps_the_mode_of_the_replaced_file(tmp_path: Path, umask: None) -> None:
    os.umask(0o022)
    shared = tmp_path / "shared.geojson"
    shared.write_text("old")
    shared.chmod(0o664)  # e.g. group-writable for a lab's QuPath service account
    private = tmp_path / "private.csv"
    private.write_text("old")
    private.chmod(0o600)
    write_text_atomic(shared, "new")
    write_text_atomic(private, "new")
    assert (shared.read_text(), mode(shared)) == ("new", 0o664)
    assert (private.read_text(), mode(private)) == ("new", 0o600)
