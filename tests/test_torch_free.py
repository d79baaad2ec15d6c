"""What must load without torch: reading and checking a run's configuration, the metrics, the CLI parser.

Each check runs in a fresh interpreter, since this test session has long imported torch itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def modules_loaded_by(code: str) -> set[str]:
    """Names in ``sys.modules`` after running ``code`` in a new interpreter on this checkout's sources."""
    path = os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize("name", ["default.yaml", "seed.yaml", "demo.yaml"])
def test_reading_a_run_config_does_not_import_torch(name: str, tmp_path: Path) -> None:
    saved = tmp_path / "config.yaml"
    loaded = modules_loaded_by(
        "from nucleisam.config import load_run_config, save_config\n"
        f"config = load_run_config({str(REPO_ROOT / 'configs' / name)!r}, ['train.epochs=3'])\n"
        f"save_config(config, {str(saved)!r})\n"
        f"assert load_run_config({str(saved)!r}) == config and config.train.epochs == 3"
    )
    assert "nucleisam.config" in loaded
    assert not {"torch", "kornia", "numpy", "nucleisam.model", "nucleisam.data"} & loaded


def test_metrics_load_without_torch_data_or_yaml() -> None:
    loaded = modules_loaded_by("import nucleisam.metrics")
    assert "nucleisam.metrics" in loaded
    assert not {"torch", "yaml", "nucleisam.data", "nucleisam.config"} & loaded


def test_cli_parser_does_not_import_torch() -> None:
    # The model options' choices come from nucleisam.config, so `nucleisam --help` stays quick.
    loaded = modules_loaded_by("from nucleisam.cli import build_parser\nbuild_parser()")
    assert "nucleisam.config" in loaded and "torch" not in loaded
