"""benchmarks/gpu.sh from a fresh copy of the repository plus a wheel folder, without network: the
CPU dry run installs the wheels offline and prints the table (the GPU figures come from a GPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def tracked_files() -> list[str]:
    """What a fresh copy of the checkout holds: tracked files and new ones git does not ignore."""
    done = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          cwd=REPO_ROOT, capture_output=True, check=True)
    return [name for name in done.stdout.decode().split("\0") if name]


def stand_in_wheel(folder: Path) -> Path:
    """A real (tiny) wheel, standing in for the downloaded ones: no network in tests."""
    wheel = folder / "nucleisam_gpu_probe-1.0-py3-none-any.whl"
    info = "nucleisam_gpu_probe-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("nucleisam_gpu_probe.py", "INSTALLED = True\n")
        archive.writestr(f"{info}/METADATA",
                         "Metadata-Version: 2.1\nName: nucleisam-gpu-probe\nVersion: 1.0\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


def test_gpu_sh_dry_run_in_a_fresh_copy(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("needs the git checkout to copy its tracked files")
    copy = tmp_path / "repo"
    for name in tracked_files():
        if (REPO_ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, copy / name)
    wheels = copy / "benchmarks" / "gpu" / "wheels"
    wheels.mkdir(parents=True)
    stand_in_wheel(wheels)
    # No index, no proxy that works: any attempt to download fails instead of reaching out.
    env = {**os.environ, "PYTHON": sys.executable, "PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "PYTHONPATH": ""}
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run"], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "installed 1 wheels from benchmarks/gpu/wheels (no network)" in done.stdout
    assert (copy / "benchmarks" / "gpu" / "site" / "nucleisam_gpu_probe.py").is_file()
    assert "CPU dry run" in done.stdout and "measure" in done.stdout
    result = json.loads((copy / "benchmarks" / "results" / "gpu.json").read_text())
    assert result["machine"]["dry_run"] is True
    measures = [row["measure"] for row in result["results"]]
    assert [m.split(" input")[0] for m in measures] == [
        "train lora:instance", "train lora:sam", "infer network", "infer end to end", "infer predict path"]
    assert all(row["per_s"] > 0 for row in result["results"])


def test_gpu_sh_names_the_prepare_step_when_dependencies_are_missing(tmp_path: Path) -> None:
    """A Python without kornia and no wheel folder: one clear line, exit 2, nothing measured."""
    script = REPO_ROOT / "benchmarks" / "gpu.sh"
    copy = tmp_path / "repo" / "benchmarks"
    copy.mkdir(parents=True)
    shutil.copy2(script, copy / "gpu.sh")
    env = {**os.environ, "PYTHON": shutil.which("python3") or "python3", "PYTHONPATH": "",
           "PYTHONNOUSERSITE": "1"}
    probe = subprocess.run([env["PYTHON"], "-c", "import kornia"], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip("the system python has kornia")
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run"], cwd=copy.parent, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "run benchmarks/gpu/prepare.sh" in done.stderr


def test_prepare_sh_leaves_out_what_the_machine_has(tmp_path: Path) -> None:
    """--have drops the listed packages (names compared as PEP 503 does) from the download; the pip
    is a stand-in that records its arguments, so no network is needed."""
    record = tmp_path / "pip-args"
    fake_pip = tmp_path / "pip"
    fake_pip.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {record}\n'
                        'mkdir -p "$5" && touch "$5/stand-in.whl"\n')
    fake_pip.chmod(0o755)
    have = tmp_path / "have.txt"
    have.write_text("# a machine's packages\nPyArrow\nmatplotlib  # with a comment\npython_dateutil\n\n")
    env = {**os.environ, "PIP": str(fake_pip)}
    script = REPO_ROOT / "benchmarks" / "gpu" / "prepare.sh"
    done = subprocess.run(["bash", str(script), "--have", str(have), str(tmp_path / "wheels")], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "3 of 33 packages are on the machine" in done.stdout
    pins = [arg for arg in record.read_text().split() if "==" in arg]
    names = {pin.split("==")[0] for pin in pins}
    assert len(pins) == 30 and {"kornia", "zarr", "dask", "tzdata"} <= names
    assert not names & {"pyarrow", "matplotlib", "python-dateutil"}

    missing = subprocess.run(["bash", str(script), "--have", str(tmp_path / "absent.txt")], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "absent.txt" in missing.stderr
