"""The cross-validation runner, with a method whose every score is known in advance.

``OracleMethod`` segments each test image with its own ground truth (the primary row: every metric
exactly 1.0) and finds nothing in a comparison row (every metric exactly 0.0), so the runner's
scoring, files, resume and report can be checked for exact values in a second, without a model. The
end-to-end runs of the real methods are in test_experiments_model_method.py and
test_experiments_classical_method.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nucleisam.config import BaselineConfig, DataConfig, load_baseline_config
from nucleisam.data import Sample, load_nuinsseg
from nucleisam.errors import NucleisamError
from nucleisam.experiments.cv import run_cv, run_fold, train_final
from nucleisam.experiments.method import FitInfo, FoldSplit, OneProcess
from nucleisam.experiments.report import REPORT_METRICS
from nucleisam.utils.tables import read_rows_csv

METRICS = tuple(REPORT_METRICS)
VARIANTS = ("vague_excluded", "all_pixels")


def _key(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


class OracleMethod:
    """Knows the test answers; records what the runner asks of it, in order."""

    primary = "watershed"
    batch_size = 2
    history_file = None

    def __init__(self, config: BaselineConfig) -> None:
        self.config = config
        self.select_metric = config.select_metric
        self.processes = OneProcess()
        self.calls: list[tuple] = []
        self.answers: dict[str, np.ndarray] = {}

    def check(self) -> None:
        self.calls.append(("check",))

    def fit(self, split: FoldSplit, directory: Path, *, resume: bool, log) -> FitInfo:
        self.calls.append(("fit", split.index, [s.stem for s in split.train], [s.stem for s in split.val]))
        self.answers = {_key(s.load_image()): s.load_labels() for s in split.test}
        scratch = directory / "scratch"
        scratch.mkdir(parents=True)
        return FitInfo({"trained_on": len(split.train)}, scratch=scratch)

    def tune(self, val: Sequence[Sample], *, log) -> dict:
        self.calls.append(("tune", [s.stem for s in val]))
        log("tuned")
        return {"val_tuned": {"aji": 0.5}}

    def segment_all(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        self.calls.append(("segment", len(images)))
        answers = [self.answers[_key(image)] for image in images]
        return [{"watershed": labels, "classical": np.zeros_like(labels)} for labels in answers]

    def save(self, directory: Path) -> None:
        assert not (directory / "metrics.json").exists(), "metrics.json is written after the artefacts"
        self.calls.append(("save", directory.name))
        (directory / "artefact.txt").write_text("saved")


def _config(root: Path, k: int = 3) -> BaselineConfig:
    """A configuration with a data section and a selection metric, as every method's has."""
    return BaselineConfig(data=DataConfig(root=str(root), k=k, val_fraction=0.25))


@pytest.fixture(scope="module")
def data_root(cropped_sample: Callable[[int, int], Path]) -> Path:
    """All six bundled tiles, cropped to 160×160 (four of them have vague areas)."""
    return cropped_sample(6, 160)


@pytest.fixture(scope="module")
def oracle_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("oracle") / "run"
    method, lines = OracleMethod(_config(data_root)), []
    summary = run_cv(method, out, command="nucleisam cv --out run", notes=["a note"], log=lines.append)
    return {"out": out, "method": method, "summary": summary, "log": lines}


def test_each_fold_is_fitted_tuned_scored_and_saved_in_order(oracle_run: dict) -> None:
    out, calls = oracle_run["out"], oracle_run["method"].calls
    manifest = json.loads((out / "folds.json").read_text())["folds"]
    expected: list[tuple] = [("check",)]  # the method's own inputs, before anything is written
    for index, fold in enumerate(manifest):
        expected += [("fit", index, fold["train"], fold["val"]), ("tune", fold["val"])]
        expected += [("segment", n) for n in (2, len(fold["test"]) - 2) if n > 0]
        expected.append(("save", f"fold_{index}"))
    assert calls == expected
    assert "fold 0: tuned" in oracle_run["log"]  # the method's lines carry the fold


def test_scores_equal_the_known_answers(oracle_run: dict, data_root: Path) -> None:
    summary = oracle_run["summary"]
    assert summary == json.loads((oracle_run["out"] / "summary.json").read_text())
    assert list(summary["methods"]) == ["watershed", "classical"] and summary["primary_method"] == "watershed"
    for variant in VARIANTS:
        for name, value in (("watershed", 1.0), ("classical", 0.0)):
            method = summary["methods"][name]
            assert set(method["mean"][variant]) >= set(METRICS)
            assert set(method["mean"][variant].values()) == {value}
            assert set(method["std"][variant].values()) == {0.0}
    stems = {s.stem for s in load_nuinsseg(data_root).samples}
    rows = [r for i in range(3) for r in read_rows_csv(oracle_run["out"] / f"fold_{i}" / "per_image.csv",
                                                        text_columns={"stem", "organ", "method", "variant"})]
    assert len(rows) == len(stems) * 2 * 2  # every test image × two rows × with/without vague areas
    assert {r["stem"] for r in rows} == stems
    assert summary["per_organ"]["human spleen"] == {"n_images": 6, **dict.fromkeys(METRICS, 1.0)}


def test_fold_files_hold_the_methods_records_and_nothing_temporary(oracle_run: dict) -> None:
    out = oracle_run["out"]
    for index in range(3):
        folder = out / f"fold_{index}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["fold"] == index and metrics["trained_on"] == metrics["n_train"]
        assert metrics["val_tuned"] == {"aji": 0.5} and metrics["seconds"] >= 0.0
        assert metrics["test"]["watershed"]["vague_excluded"]["n_images"] == metrics["n_test"]
        assert (folder / "artefact.txt").read_text() == "saved" and not (folder / "scratch").exists()
    assert not list(out.rglob("*.part")) and not (out / "curves.png").exists()


def test_overlays_show_the_primary_row_of_the_first_test_tiles(oracle_run: dict) -> None:
    out = oracle_run["out"]
    manifest = json.loads((out / "folds.json").read_text())["folds"]
    expected = {f"fold{i}_{stem}.png" for i, fold in enumerate(manifest) for stem in sorted(fold["test"])[:2]}
    overlays = sorted((out / "overlays").glob("*.png"))
    assert {path.name for path in overlays} == expected
    pixels = np.asarray(Image.open(overlays[0])).reshape(-1, 3)
    # A perfect prediction: every contour is shared (white), none only predicted (magenta).
    assert (pixels == (255, 255, 255)).all(axis=1).sum() > 100
    assert not (pixels == (255, 0, 255)).all(axis=1).any()


def test_report_numbers_are_the_summary_numbers(oracle_run: dict) -> None:
    summary, report = oracle_run["summary"], (oracle_run["out"] / "report.md").read_text()
    for name in ("watershed", "classical"):
        method = summary["methods"][name]
        for variant in VARIANTS:
            cells = " | ".join(
                f"{method['mean'][variant][m]:.3f} ± {method['std'][variant][m]:.3f}" for m in METRICS
            )
            assert f"| {method['label']} | {cells} |" in report
    assert report.startswith("# nucleisam cross-validation report") and "> a note" in report
    assert "![fold0_" in report and "```bash\nnucleisam cv --out run\n```" in report


def test_resume_runs_only_unfinished_folds(oracle_run: dict, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(oracle_run["out"], out)
    shutil.rmtree(out / "fold_1")
    method, lines = OracleMethod(_config(data_root)), []
    with pytest.raises(NucleisamError, match="already holds a run"):
        run_cv(method, out, log=lines.append)
    summary = run_cv(method, out, resume=True, command="nucleisam cv --out run", notes=["a note"],
                     log=lines.append)
    assert [call[1] for call in method.calls if call[0] == "fit"] == [1]
    assert any(line.startswith("fold 0: finished earlier, not redone") for line in lines)
    assert summary["methods"] == oracle_run["summary"]["methods"]


def test_only_the_wanted_folds_run(data_root: Path, tmp_path: Path) -> None:
    method = OracleMethod(_config(data_root))
    with pytest.raises(NucleisamError, match=r"fold 3 does not exist \(only_folds\): folds are 0–2"):
        run_cv(method, tmp_path / "bad", only_folds=[3], log=lambda line: None)
    assert not (tmp_path / "bad").exists()
    summary = run_cv(method, tmp_path / "one", only_folds=[1], log=lambda line: None)
    assert [call[1] for call in method.calls if call[0] == "fit"] == [1]
    assert summary["folds_completed"] == 1 and summary["k"] == 3
    assert sorted(p.name for p in (tmp_path / "one").glob("fold_*")) == ["fold_1"]


def test_folds_without_validation_images_are_refused_before_writing(
    cropped_sample: Callable[[int, int], Path], tmp_path: Path
) -> None:
    two = cropped_sample(2, 64)
    method = OracleMethod(_config(two, k=2))  # one training image per fold: nothing left to tune on
    with pytest.raises(NucleisamError, match="fold 0 has no validation images"):
        run_cv(method, tmp_path / "out", log=lambda line: None)
    assert not (tmp_path / "out").exists()
    split = FoldSplit(0, list(load_nuinsseg(two).samples), [], [])
    with pytest.raises(NucleisamError, match=r"data\.val_fraction=0\.25"):
        run_fold(method, split, tmp_path / "fold", log=lambda line: None)
    assert not (tmp_path / "fold").exists()


def test_train_final_holds_out_validation_images_and_scores_nothing(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "final-run"
    method = OracleMethod(_config(data_root))
    directory = train_final(method, out, log=lambda line: None)
    assert directory == out / "final"
    assert [call[0] for call in method.calls] == ["check", "fit", "tune", "save"]
    (_, _, train, val), (_, tuned) = method.calls[1:3]
    assert val and tuned == val and not set(train) & set(val) and len(train) + len(val) == 6
    metrics = json.loads((directory / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (len(train), len(val), 0)
    assert "test" not in metrics and not (out / "folds.json").exists() and not (out / "summary.json").exists()
    assert load_baseline_config(out / "config.yaml") == method.config
