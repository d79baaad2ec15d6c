"""Every command against a full disk and a read-only output folder: one line, exit 2, nothing
half-written, no traceback.

Where the tests run as root (CI, the development machines) the failures are real: a tiny tmpfs is
mounted for the output (and remounted read-only). Elsewhere the same operating-system errors are
injected where every output file is created (``tempfile.mkstemp`` in the atomic writer), which is
the first write of any command.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nucleisam.cli import main
from nucleisam.utils import atomic

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY_CV = ["--set", "train.epochs=1", "--set", "train.num_workers=0", "--set", "train.progress=false",
           "--set", "train.device=cpu", "--set", "model.mode=decoder", "--set", "model.input_size=128",
           "--set", "model.weights=none", "--k", "2"]


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture(params=["full disk", "read-only folder"])
def broken_output(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[tuple[Path, str]]:
    """(folder whose writes fail, expected error name): a real tmpfs as root, else an injected error."""
    where = tmp_path / "out-disk"
    code = errno.ENOSPC if request.param == "full disk" else errno.EROFS
    if _mount_tmpfs(where, "8k" if code == errno.ENOSPC else "1m"):
        try:
            if code == errno.ENOSPC:  # fill it, leaving no room for any result file
                (where / "filler").write_bytes(b"\0" * 8192)
            else:
                subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
            yield where, errno.errorcode[code]
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)
        return
    where.mkdir(parents=True, exist_ok=True)
    real_mkstemp = tempfile.mkstemp

    def failing_mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        if Path(str(kwargs.get("dir", ""))).resolve().is_relative_to(where.resolve()):
            raise OSError(code, os.strerror(code), str(kwargs["dir"]))
        return real_mkstemp(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(atomic.tempfile, "mkstemp", failing_mkstemp)
    yield where, errno.errorcode[code]


def _predictions(tmp_path: Path, sample_root: Path) -> Path:
    """Ground truth copied as a prediction folder (what `nucleisam predict` writes)."""
    folder = tmp_path / "pred"
    folder.mkdir(exist_ok=True)
    for tif in (sample_root / "human spleen" / "label masks modify").glob("*.tif"):
        shutil.copy(tif, folder / f"{tif.stem}_labels.tif")
    return folder


def _tile(data: Path) -> str:
    return str(data / "human spleen" / "tissue images" / "human_spleen_01.png")


COMMANDS: dict[str, Callable[[Path, Path, Path], list[str]]] = {
    "data folds": lambda data, tmp, out: ["data", "folds", "--data", str(data), "--k", "3",
                                          "--out", str(out / "f.json")],
    "evaluate": lambda data, tmp, out: ["evaluate", "--pred", str(_predictions(tmp, data)),
                                        "--data", str(data), "--out", str(out / "eval")],
    "predict": lambda data, tmp, out: ["predict", _tile(data), "--method", "classical",
                                       "--out", str(out / "pred")],
    "baseline": lambda data, tmp, out: ["baseline", "--data", str(data), "--k", "2",
                                        "--out", str(out / "run")],
    "cv": lambda data, tmp, out: ["cv", "--data", str(data), "--out", str(out / "run"), *TINY_CV],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_on_a_broken_output_is_one_line_and_leaves_nothing(
    command: str, broken_output: tuple[Path, str], sample_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, error_name = broken_output
    before = sorted(p.name for p in out.rglob("*"))
    code = main(COMMANDS[command](sample_root, tmp_path, out))
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2, err
    assert last.startswith("nucleisam: error: ") and error_name in last, err
    assert "Traceback" not in err
    assert str(out) in last  # names where it could not write
    # Nothing half-written: at most empty folders appeared, no file, not even a temporary one.
    after = [p for p in out.rglob("*") if p.name not in before]
    assert not [p for p in after if p.is_file()], after
