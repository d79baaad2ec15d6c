"""Cross-validation end to end on cropped tiles of the bundled sample, with a tiny budget.

Checks the run folder's outputs, that folds never share images, that every fold starts from a fresh,
identically initialised model and a fresh optimiser, and that --resume does not redo finished folds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import nucleisam.experiments.model_method as model_method
import nucleisam.train.loop as loop
from nucleisam.cli import main
from nucleisam.config import load_run_config
from nucleisam.model import read_adapter_metadata
from nucleisam.train.state import trainable_state

# Random base weights are the point here (no network, no checkpoint); the warning is expected.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*RANDOM weights")]

TINY = [
    "train.epochs=2",
    "train.batch_size=1",
    "train.eval_batch_size=2",
    "train.num_workers=0",
    "train.progress=false",
    "train.device=cpu",
    "train.lr=1e-3",
    "model.mode=decoder",
    "model.input_size=128",
    "model.weights=none",
    "data.k=2",
    "data.val_fraction=0.5",
]


@pytest.fixture(scope="module")
def small_root(cropped_sample: Callable[[int, int], Path]) -> Path:
    """The first four bundled tiles, cropped to their top-left 128×128, in the NuInsSeg layout."""
    return cropped_sample(4, 128)


@pytest.fixture(scope="module")
def cv_run(small_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny cv run, recording each fold's initial weights and optimiser."""
    out = tmp_path_factory.mktemp("cv") / "run"
    initial_states, optimizers = [], []
    real_build, real_optimizer = model_method.build_model, loop.build_optimizer

    def recording_build(config):
        model = real_build(config)
        initial_states.append({k: v.clone() for k, v in trainable_state(model).items()})
        return model

    def recording_optimizer(params, config):
        optimizer = real_optimizer(params, config)
        optimizers.append((optimizer, len(optimizer.state)))
        return optimizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_method, "build_model", recording_build)
        patch.setattr(loop, "build_optimizer", recording_optimizer)
        argv = ["cv", "--data", str(small_root), "--out", str(out)]
        for item in TINY:
            argv += ["--set", item]
        assert main(argv) == 0
    return {"out": out, "initial_states": initial_states, "optimizers": optimizers}


def test_run_folder_is_complete_and_self_describing(cv_run: dict) -> None:
    out: Path = cv_run["out"]
    for name in ("config.yaml", "folds.json", "summary.json", "report.md", "curves.png"):
        assert (out / name).is_file(), name
    config = load_run_config(out / "config.yaml")
    assert config.train.epochs == 2 and config.model.input_size == 128
    # NuInsSeg tiles record no resolution: the run records NuInsSeg's, in every place that says it.
    assert config.data.mpp == 0.25
    for fold in range(2):
        folder = out / f"fold_{fold}"
        for name in ("adapter.safetensors", "history.csv", "per_image.csv", "metrics.json"):
            assert (folder / name).is_file(), (fold, name)
        assert not (folder / "checkpoint").exists()
        history = (folder / "history.csv").read_text().splitlines()
        assert len(history) == 3 and "val_aji" in history[0]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["mpp"], summary["mpp_source"]) == (0.25, "NuInsSeg's, by default")
    assert read_adapter_metadata(out / "fold_0" / "adapter.safetensors")["train_mpp"] == 0.25
    assert set(summary["methods"]) == {"watershed", "connected_components", "classical"}
    for method in summary["methods"].values():
        for variant in ("vague_excluded", "all_pixels"):
            assert 0.0 <= method["mean"][variant]["aji"] <= 1.0
            assert len(method["per_fold"]) == 2
    report = (out / "report.md").read_text()
    assert "model + tuned watershed" in report and "Published reference numbers" in report
    assert "| classical baseline (no model) |" in report  # issue 7: the baseline on the same test images
    assert "## Classical baseline parameters tuned per fold" in report
    assert all(set(f["classical_params"]) >= {"sigma", "min_area"} for f in summary["folds"])
    fold = json.loads((out / "fold_0" / "metrics.json").read_text())
    assert set(fold["classical_params"]) >= {"sigma", "otsu_scale", "peak_height", "min_area"}
    assert f"--config {out / 'config.yaml'}" in report
    assert list((out / "overlays").glob("*.png"))
    assert not list(out.rglob("*.part"))


def test_folds_never_share_images(cv_run: dict) -> None:
    manifest = json.loads((cv_run["out"] / "folds.json").read_text())
    folds = manifest["folds"]
    tests = [set(f["test"]) for f in folds]
    assert set().union(*tests) == {s for f in folds for s in f["train"] + f["val"] + f["test"]}
    for i, fold in enumerate(folds):
        train, val, test = set(fold["train"]), set(fold["val"]), set(fold["test"])
        assert not (train & val) and not (train & test) and not (val & test)
        for j in range(i):
            assert not (tests[i] & tests[j])
    for i in range(2):
        stems = {
            row.split(",")[0]
            for row in (cv_run["out"] / f"fold_{i}" / "per_image.csv").read_text().splitlines()[1:]
        }
        assert stems == tests[i]


def test_every_fold_starts_fresh(cv_run: dict) -> None:
    states, optimizers = cv_run["initial_states"], cv_run["optimizers"]
    assert len(states) == 2 and len(optimizers) == 2
    assert states[1].keys() == states[0].keys()
    assert all(torch.equal(states[1][k], states[0][k]) for k in states[0])
    assert optimizers[0][0] is not optimizers[1][0]
    assert all(entries_at_start == 0 for _, entries_at_start in optimizers)
    # Each fold's optimiser updates only its own (fresh) model's parameters.
    params = [{id(p) for group in opt.param_groups for p in group["params"]} for opt, _ in optimizers]
    assert params[0] and params[1] and not (params[0] & params[1])


def test_resume_does_not_redo_finished_folds(cv_run: dict, small_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(cv_run["out"], out)
    shutil.rmtree(out / "fold_1")
    calls = []
    real_fit = model_method.fit

    def counting_fit(*args, **kwargs):
        calls.append(kwargs["label"])
        return real_fit(*args, **kwargs)

    argv = ["cv", "--data", str(small_root), "--out", str(out), "--resume"]
    for item in TINY:
        argv += ["--set", item]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_method, "fit", counting_fit)
        assert main(argv) == 0
    assert calls == ["fold 1"]
    again = json.loads((out / "summary.json").read_text())
    first = json.loads((cv_run["out"] / "summary.json").read_text())
    # CPU, fixed seed: the redone fold reproduces the first run exactly.
    assert again["methods"] == first["methods"]


def test_existing_run_needs_resume_and_same_config(cv_run: dict, small_root: Path) -> None:
    argv = ["cv", "--data", str(small_root), "--out", str(cv_run["out"])]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 2  # already holds a run
    assert main([*argv, "--resume", "--set", "train.lr=0.5"]) == 2  # a result-changing option differs


def test_train_all_writes_a_final_adapter_with_tuned_postprocessing(small_root: Path, tmp_path: Path) -> None:
    from nucleisam.model import load_adapter

    out = tmp_path / "final-run"
    argv = ["train", "--data", str(small_root), "--out", str(out), "--all"]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 0
    adapter = out / "final" / "adapter.safetensors"
    model, metadata = load_adapter(adapter)
    assert model.config.input_size == 128 and model.config.mode == "decoder"
    assert set(metadata["postprocess"]) >= {"foreground_threshold", "min_area"}
    assert metadata["training"]["best_epoch"] in (1, 2)
    metrics = json.loads((out / "final" / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (2, 2, 0)
    assert not list(out.glob("fold_*")) and not (out / "folds.json").exists()


def test_a_model_trained_at_20x_reads_slides_at_20x(
    cv_run: dict, small_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``train --all --mpp 0.5`` records train_mpp 0.5, so predict reads a 0.25 µm/px slide's 2x level
    (0.5 µm/px); an adapter trained at NuInsSeg's 0.25 reads the same slide's level 0."""
    from PIL import Image

    from nucleisam.data import read_rgb
    from slides_helpers import write_slide

    out = tmp_path / "half"
    argv = ["train", "--data", str(small_root), "--out", str(out), "--all", "--mpp", "0.5"]
    for item in [*TINY, "train.epochs=1"]:
        argv += ["--set", item]
    assert main(argv) == 0
    half = out / "final" / "adapter.safetensors"
    assert read_adapter_metadata(half)["train_mpp"] == 0.5
    assert load_run_config(out / "config.yaml").data.mpp == 0.5

    tile = read_rgb(next((small_root / "human spleen" / "tissue images").glob("*.png")))
    scan = np.asarray(Image.fromarray(tile).resize((256, 256), Image.Resampling.BICUBIC))
    slide = write_slide(tmp_path / "scan.tif", scan, mpp=0.25, factors=(1, 2))
    capsys.readouterr()
    common = ["--tissue", "none", "--tile", "128", "--overlap", "16", "--formats", "zarr"]
    quarter = cv_run["out"] / "fold_0" / "adapter.safetensors"  # trained at NuInsSeg's 0.25 µm/px
    for adapter, name, mpp, side in [(half, "at-half", 0.5, 128), (quarter, "at-quarter", 0.25, 256)]:
        argv = ["predict", str(slide), "--adapter", str(adapter), "--out", str(tmp_path / name), *common]
        assert main(argv) == 0
        assert f"256×256 px at {mpp:g} µm/px" in capsys.readouterr().out  # level-0 size, working resolution
        group = zarr.open_group(tmp_path / name / "scan_labels.zarr", mode="r")
        assert group["0"].shape == (side, side)
        level = group.attrs["multiscales"][0]["datasets"][0]
        assert level["coordinateTransformations"][0]["scale"] == [mpp, mpp]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no data: set data.root (a NuInsSeg-layout folder)"),
        (["--mpp", "0", "--data", "SMALL"], "'data.mpp' must be a resolution in microns per pixel between "
         "0.01 and 50.0 (0.25 for a 40x scan, 0.5 for 20x) (got 0.0) (option --mpp)."),
        (["--set", "train.epochz=3"], "unknown configuration key 'train.epochz'"),
        (["--set", "model.input_size=100"], "input size 100 is not valid"),
        (["--data", "MISSING"], "MISSING"),
        (["--k", "9", "--data", "SMALL"], "cannot make k=9 folds"),
    ],
)
def test_bad_options_fail_cleanly_and_write_nothing(
    args: list[str], message: str, small_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    argv = ["cv", "--out", str(out), *[str(small_root) if a == "SMALL" else a for a in args]]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_train_unknown_fold_writes_nothing(
    small_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert main(["train", "--data", str(small_root), "--out", str(out), "--fold", "5"]) == 2
    assert "fold 5 does not exist (--fold): folds are 0–4 (--k)." in capsys.readouterr().err
    assert not out.exists()


def test_a_bad_checkpoint_is_refused_before_the_run_folder_exists(
    small_root: Path, tmp_path: Path, synthetic_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    """A truncated mobile_sam.pt is named before config.yaml or folds.json are written, so rerunning
    with the right file is a fresh start, not a refused half-run; a wrong state_dict is caught too."""
    out = tmp_path / "out"
    settings = [a for a in TINY if a != "model.weights=none"]
    overrides = [word for setting in settings for word in ("--set", setting)]
    base = ["cv", "--data", str(small_root), "--out", str(out), *overrides]
    truncated = tmp_path / "mobile_sam.pt"
    truncated.write_bytes(synthetic_checkpoint.read_bytes()[:100_000])
    assert main([*base, "--set", f"model.weights={truncated}"]) == 2
    assert "truncated or damaged" in capsys.readouterr().err and not out.exists()
    foreign = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, foreign)
    assert main([*base, "--set", f"model.weights={foreign}"]) == 2
    assert "does not match the MobileSAM architecture" in capsys.readouterr().err and not out.exists()
