"""`nucleisam baseline` end to end: the classical baseline through the cv fold manifest, no model.

One k=3 run on the bundled six-tile sample is checked file by file and against independent
recomputation (metrics from per_image.csv, per-image rows from the tuned parameters, validation
scores of the default parameters); small cropped tiles serve the cheaper checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nucleisam.experiments.cv as cv
from nucleisam.classical import classical_instances
from nucleisam.cli import main
from nucleisam.config import ClassicalConfig, load_baseline_config
from nucleisam.data import load_nuinsseg, make_folds
from nucleisam.data.resolution import FROM_CONFIG, FROM_DEFAULT, FROM_IMAGES
from nucleisam.experiments.report import REPORT_METRICS
from nucleisam.metrics import evaluate_instances
from nucleisam.utils.tables import read_rows_csv

SRC = Path(__file__).resolve().parents[1] / "src"
VARIANTS = ("vague_excluded", "all_pixels")


@pytest.fixture(scope="module")
def run(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("baseline") / "run"
    assert main(["baseline", "--data", str(sample_root), "--k", "3", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def small_root(cropped_sample: Callable[[int, int], Path]) -> Path:
    """The first three bundled tiles cropped to their top-left 160×160, in the NuInsSeg layout."""
    return cropped_sample(3, 160)


def per_image(out: Path, fold: int) -> list[dict]:
    return read_rows_csv(
        out / f"fold_{fold}" / "per_image.csv", text_columns={"stem", "organ", "method", "variant"}
    )


def test_every_output_is_written(run: Path, sample_root: Path) -> None:
    for name in ("config.yaml", "folds.json", "summary.json", "report.md"):
        assert (run / name).is_file(), name
    for fold in range(3):
        for name in ("per_image.csv", "metrics.json"):
            assert (run / f"fold_{fold}" / name).is_file(), (fold, name)
        metrics = json.loads((run / f"fold_{fold}" / "metrics.json").read_text())
        assert set(metrics["classical_params"]) == {
            "sigma",
            "threshold",
            "otsu_scale",
            "min_optical_density",
            "fill_holes",
            "peak_height",
            "min_area",
        }
        assert set(metrics["test"]) == {"classical"}
    overlays = sorted((run / "overlays").glob("*.png"))
    assert len(overlays) == 6  # two test tiles per fold
    with Image.open(overlays[0]) as image:
        assert image.size == (512, 512)
    assert (
        not list(run.rglob("*.part"))
        and not list(run.rglob("adapter*"))
        and not (run / "curves.png").exists()
    )

    config = load_baseline_config(run / "config.yaml")
    assert config.data.k == 3 and config.data.seed == 19 and Path(config.data.root) == sample_root.resolve()
    assert config.classical == ClassicalConfig() and config.select_metric == "aji"

    summary = json.loads((run / "summary.json").read_text())
    assert summary["primary_method"] == "classical" and list(summary["methods"]) == ["classical"]
    assert summary["n_images"] == 6 and summary["k"] == 3 and summary["folds_completed"] == 3
    report = (run / "report.md").read_text()
    assert report.startswith("# nucleisam classical baseline report")
    assert "| classical baseline (no model) |" in report and "Published reference numbers" in report
    assert "## Classical baseline parameters tuned per fold" in report and "Best epoch" not in report
    assert f"nucleisam baseline --config {run / 'config.yaml'} --folds {run / 'folds.json'}" in report
    assert "![fold0_" in report


def test_folds_are_disjoint_and_cover_every_image(run: Path, sample_root: Path) -> None:
    stems = {s.stem for s in load_nuinsseg(sample_root).samples}
    manifest = json.loads((run / "folds.json").read_text())
    tests = [set(fold["test"]) for fold in manifest["folds"]]
    assert len(tests) == 3 and set().union(*tests) == stems and sum(map(len, tests)) == len(stems)
    for index, fold in enumerate(manifest["folds"]):
        train, val, test = set(fold["train"]), set(fold["val"]), set(fold["test"])
        assert train | val | test == stems and not (train & val or train & test or val & test)
        assert val, "every fold tunes on at least one validation image"
        rows = per_image(run, index)
        assert {row["stem"] for row in rows} == test
        assert len(rows) == 2 * len(test)  # each test image with and without vague areas
    # The default folds are the data layer's, exactly.
    expected = make_folds(load_nuinsseg(sample_root).samples, k=3, seed=19)
    assert manifest["folds"] == expected.to_dict()["folds"]


def test_summary_equals_recomputation_from_per_image_rows(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    method = summary["methods"]["classical"]
    for variant in VARIANTS:
        for metric in REPORT_METRICS:
            fold_means = []
            for fold in range(3):
                values = [r[metric] for r in per_image(run, fold) if r["variant"] == variant]
                fold_means.append(float(np.mean(values)))
                # per_image.csv keeps 6 significant digits
                assert method["per_fold"][fold][variant][metric] == pytest.approx(fold_means[-1], abs=2e-6)
            assert method["mean"][variant][metric] == pytest.approx(np.mean(fold_means), abs=2e-6)
            assert method["std"][variant][metric] == pytest.approx(np.std(fold_means, ddof=1), abs=2e-6)
    excluded = [r for f in range(3) for r in per_image(run, f) if r["variant"] == "vague_excluded"]
    organ = summary["per_organ"]["human spleen"]
    assert organ["n_images"] == 6
    assert organ["aji"] == pytest.approx(np.mean([r["aji"] for r in excluded]), abs=2e-6)


def test_rows_are_the_tuned_baseline_scored_like_evaluate(run: Path, sample_root: Path) -> None:
    samples = {s.stem: s for s in load_nuinsseg(sample_root).samples}
    for fold in range(3):
        params = json.loads((run / f"fold_{fold}" / "metrics.json").read_text())["classical_params"]
        for row in per_image(run, fold):
            sample = samples[row["stem"]]
            prediction = classical_instances(sample.load_image(), ClassicalConfig(**params))
            vague = sample.load_vague() if row["variant"] == "vague_excluded" else None
            expected = evaluate_instances(sample.load_labels(), prediction, vague)
            for metric in ("dice", "aji", "pq", "n_pred"):
                assert row[metric] == pytest.approx(expected[metric], rel=1e-5, abs=1e-6), (
                    row["stem"],
                    metric,
                )


def test_tuning_never_lowers_the_validation_aji(run: Path, sample_root: Path) -> None:
    samples = {s.stem: s for s in load_nuinsseg(sample_root).samples}
    manifest = json.loads((run / "folds.json").read_text())
    for fold in manifest["folds"]:
        metrics = json.loads((run / f"fold_{fold['index']}" / "metrics.json").read_text())
        default = np.mean(
            [
                evaluate_instances(
                    samples[stem].load_labels(),
                    classical_instances(samples[stem].load_image()),
                    samples[stem].load_vague(),
                )["aji"]
                for stem in fold["val"]
            ]
        )
        assert metrics["val_default"] == pytest.approx(default, abs=1e-9)
        assert metrics["val_tuned"]["aji"] >= default


def test_resume_redoes_only_unfinished_folds(run: Path, tmp_path: Path, sample_root: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    shutil.rmtree(out / "fold_1")
    (out / "summary.json").unlink()
    redone = []
    real = cv.run_fold

    def counting(method, split, *args, **kwargs):
        redone.append(split.index)
        return real(method, split, *args, **kwargs)

    argv = ["baseline", "--data", str(sample_root), "--k", "3", "--out", str(out)]
    assert main(argv) == 2  # the folder holds a run: --resume needed
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cv, "run_fold", counting)
        assert main([*argv, "--resume"]) == 0
    assert redone == [1]
    again = json.loads((out / "summary.json").read_text())
    assert again["methods"] == json.loads((run / "summary.json").read_text())["methods"]
    assert main([*argv[:-4], "--k", "2", "--out", str(out), "--resume"]) == 2  # different folds


def test_runs_without_torch_and_reuses_a_fold_manifest(small_root: Path, tmp_path: Path) -> None:
    """A fresh interpreter: the whole command never imports torch; --folds reuses a manifest."""
    folds = tmp_path / "folds.json"
    argv = ["data", "folds", "--data", str(small_root), "--k", "3", "--seed", "7", "--out", str(folds)]
    assert main(argv) == 0
    out = tmp_path / "run"
    argv = ["baseline", "--data", str(small_root), "--folds", str(folds), "--out", str(out)]
    script = (
        "import sys; from nucleisam.cli import main; "
        f"code = main({argv!r}); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'kornia', 'safetensors')); "
        "print('HEAVY', heavy); sys.exit(code)"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    assert json.loads((out / "folds.json").read_text()) == json.loads(folds.read_text())
    assert load_baseline_config(out / "config.yaml").data.seed == 7
    assert json.loads((out / "summary.json").read_text())["k"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "MISSING"], "data folder not found"),
        (["--data", "EMPTY"], "is empty"),
        (["--data", "SMALL", "--k", "1"], "'data.k' must be at least 2 (got 1) (option --k)"),
        (["--data", "SMALL", "--k", "4"], "cannot make k=4 folds from 3 images"),
        (["--data", "SMALL", "--val-fraction", "1.5"], "must be in (0, 1) (got 1.5) (option --val-fraction)"),
        (["--data", "SMALL", "--folds", "MISSING.json"], "fold manifest not found"),
        (["--data", "SMALL", "--mpp", "0"],
         "'data.mpp' must be a resolution in microns per pixel between 0.01 and 50.0 (0.25 for a 40x scan, "
         "0.5 for 20x) (got 0.0) (option --mpp)"),
        (["--data", "SMALL", "--mpp", "nan"],
         "'data.mpp': got nan (float), expected a finite number (option --mpp)"),
        (["--data", "SMALL", "--folds", "MISSING.json", "--k", "3"], "--folds FILE fixes the folds"),
        (["--k", "3"], "no data: set data.root (a NuInsSeg-layout folder), or data.images with data.masks "
                       "(folders of images and label maps) (options --data, --images, --masks)."),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(
    args: list[str], message: str, small_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "EMPTY").mkdir()
    replace = {"SMALL": str(small_root), "EMPTY": str(tmp_path / "EMPTY"), "MISSING": str(tmp_path / "nope")}
    out = tmp_path / "out"
    argv = ["baseline", "--out", str(out), *[replace.get(a, a) for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nucleisam: error:") and message in err
    assert not out.exists()


def test_unwritable_out_is_a_clear_error(
    small_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    assert main(["baseline", "--data", str(small_root), "--k", "3", "--out", str(blocker / "run")]) == 2
    assert "cannot create output folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file"]


def test_a_fold_manifest_for_other_data_is_refused(
    sample_root: Path, small_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folds = tmp_path / "folds.json"
    make_folds(load_nuinsseg(sample_root).samples, k=3).save(folds)
    out = tmp_path / "out"
    assert main(["baseline", "--data", str(small_root), "--folds", str(folds), "--out", str(out)]) == 2
    assert "no longer matches the data" in capsys.readouterr().err
    assert not out.exists()


def test_a_half_written_image_is_found_before_the_run_writes_anything(
    sample_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pairing reads headers only; the run decodes every file first, so a truncated PNG is named
    up front (skipped with a warning, or an error with data.strict) instead of killing fold 2."""
    png = sample_copy / "human spleen" / "tissue images" / "human_spleen_13.png"
    png.write_bytes(png.read_bytes()[:2000])
    strict, config = tmp_path / "strict", tmp_path / "strict.yaml"
    config.write_text("data:\n  strict: true\n")
    assert main(["baseline", "--data", str(sample_copy), "--k", "2", "--out", str(strict),
                 "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "human_spleen_13.png" in err and "strict" in err and not strict.exists()
    lenient = tmp_path / "lenient"
    assert main(["baseline", "--data", str(sample_copy), "--k", "2", "--out", str(lenient)]) == 0
    assert "warning: cannot read image" in capsys.readouterr().out
    folds = json.loads((lenient / "folds.json").read_text())
    assert "human_spleen_13" not in json.dumps(folds) and folds["n_samples"] == 5


def test_the_images_resolution_is_recorded_from_their_tags_or_the_option(
    small_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Own data as TIFFs recording 0.5 µm/px: the run records 0.5 without being told; --mpp wins; the
    NuInsSeg tiles, which record none, are NuInsSeg's 0.25 without a warning."""
    import tifffile

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for sample in load_nuinsseg(small_root):
        tifffile.imwrite(images / f"{sample.stem}.tif", sample.load_image(), photometric="rgb",
                         resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # 20,000 px/cm = 0.5 µm/px
        shutil.copy(sample.labels_path, masks / sample.labels_path.name)
    common = ["--k", "3", "--val-fraction", "0.5"]
    for args, name, expected in [
        (["--images", str(images), "--masks", str(masks)], "tags", (0.5, FROM_IMAGES)),
        (["--images", str(images), "--masks", str(masks), "--mpp", "0.46"], "option", (0.46, FROM_CONFIG)),
        (["--data", str(small_root)], "nuinsseg", (0.25, FROM_DEFAULT)),
    ]:
        out = tmp_path / name
        assert main(["baseline", *args, *common, "--out", str(out)]) == 0
        assert "warning" not in capsys.readouterr().out  # 0.46 is within 10% of the tags' 0.5
        assert load_baseline_config(out / "config.yaml").data.mpp == expected[0]
        summary = json.loads((out / "summary.json").read_text())
        assert (summary["mpp"], summary["mpp_source"]) == expected
        assert f"images at {expected[0]:g} µm/px ({expected[1]})" in (out / "report.md").read_text()
    # Told 0.25 for images that all record 0.5: the option wins, with a warning naming both.
    assert main(["baseline", "--images", str(images), "--masks", str(masks), "--mpp", "0.25", *common,
                 "--out", str(tmp_path / "clash")]) == 0
    assert "data.mpp (--mpp) is 0.25 µm/px but every image records 0.5 µm/px" in capsys.readouterr().out
    assert load_baseline_config(tmp_path / "clash" / "config.yaml").data.mpp == 0.25


def test_a_run_saved_before_data_mpp_existed_resumes(small_root: Path, tmp_path: Path) -> None:
    """Its config.yaml has no data.mpp; it assumed NuInsSeg's 0.25, which the resumed run resolves."""
    out = tmp_path / "run"
    argv = ["baseline", "--data", str(small_root), "--k", "3", "--out", str(out)]
    assert main(argv) == 0
    config = out / "config.yaml"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if not line.strip().startswith("mpp:")))
    assert load_baseline_config(config).data.mpp is None
    shutil.rmtree(out / "fold_2")
    assert main([*argv, "--resume"]) == 0
    assert main([*argv, "--resume", "--mpp", "0.5"]) == 2  # a different resolution is another run
