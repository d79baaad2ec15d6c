"""`nucleisam evaluate`: pairing by stem, missing and extra predictions, outputs, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import SHARED_SPLEEN, requires_shared_data, run_cli
from nucleisam.cli import main
from nucleisam.evaluate import evaluate_folders
from nucleisam.metrics import MetricAccumulator

ORGAN = "human spleen"


def label_paths(root: Path) -> list[Path]:
    return sorted((root / ORGAN / "label masks modify").glob("*.tif"))


def shifted(labels: np.ndarray) -> np.ndarray:
    return np.roll(labels, 3, axis=1)


@pytest.fixture
def predictions(tmp_path: Path, sample_root: Path) -> Path:
    """Shifted GT as predictions for all but the last tile, plus one file with an unknown stem."""
    folder = tmp_path / "my predictions"
    folder.mkdir()
    paths = label_paths(sample_root)
    for path in paths[:-1]:
        tifffile.imwrite(folder / path.name, shifted(tifffile.imread(path)))
    np.save(folder / "not_in_the_data.npy", np.zeros((8, 8), np.int32))
    return folder


def test_evaluate_nuinsseg_root_writes_the_three_reports(
    predictions: Path, sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report dir"
    code, stdout, _ = run_cli(["evaluate", "--pred", str(predictions), "--data", str(sample_root),
                               "--out", str(out)], capsys)
    assert code == 0
    paths = label_paths(sample_root)
    missing = paths[-1].stem
    assert f"missing predictions (scored as empty): {missing}" in stdout
    assert "not_in_the_data.npy" in stdout and "vague areas excluded" in stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 6 and summary["n_with_vague_area"] >= 1
    assert summary["missing_predictions"] == [missing]
    assert summary["unmatched_predictions"] == ["not_in_the_data.npy"]
    assert set(summary["definitions"]) >= {"dice", "aji", "aji_plus", "pq", "msa"}

    # The numbers are exactly what the accumulator gives on the same maps.
    expected = MetricAccumulator()
    for path in paths:
        gt = tifffile.imread(path)
        vague_path = sample_root / ORGAN / "vague areas" / "mask binary" / f"{path.stem}.png"
        pred = np.zeros_like(gt) if path.stem == missing else shifted(gt)
        expected.update(gt, pred, np.asarray(Image.open(vague_path)) > 0, key=path.stem)
    reference = expected.compute()
    for name in ("dice", "aji", "aji_plus", "pq", "msa"):
        assert summary["vague_excluded"]["mean"][name] == pytest.approx(reference.mean[name], abs=1e-12)
        assert summary["vague_excluded"]["pooled"][name] == pytest.approx(reference.pooled[name], abs=1e-12)

    with open(out / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["stem"] for row in rows] == [path.stem for path in paths]
    missing_row = rows[-1]
    assert missing_row["prediction"] == "" and float(missing_row["aji"]) == 0.0
    assert "all_pixels_aji" in missing_row
    markdown = (out / "summary.md").read_text()
    assert "mean ± std" in markdown and "pooled" in markdown and "Vague areas excluded" in markdown
    assert "## All pixels" in markdown and missing in markdown


def test_evaluate_gt_folder_with_ambiguous_folder_and_json(
    sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for path in label_paths(sample_root)[:2]:
        labels = tifffile.imread(path)
        Image.fromarray(labels.astype(np.uint16)).save(gt_dir / f"{path.stem}.png")
        np.save(pred_dir / f"{path.stem}.npy", labels.astype(np.int64) * 7)  # same instances, other ids
    code, stdout, _ = run_cli(["evaluate", "--pred", str(pred_dir), "--masks", str(gt_dir),
                           "--vague-masks", str(sample_root / ORGAN / "vague areas" / "mask binary"),
                           "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["n_images"] == 2 and summary["missing_predictions"] == []
    assert all(value == 1.0 for value in summary["vague_excluded"]["mean"].values())
    assert all(value == 1.0 for value in summary["all_pixels"]["pooled"].values())
    assert not (tmp_path / "per_image.csv").exists()  # no --out: nothing written


def test_without_vague_masks_only_all_pixels_is_reported(sample_root: Path, tmp_path: Path) -> None:
    gt_dir = sample_root / ORGAN / "label masks modify"
    result = evaluate_folders(gt_dir, gt_dir=gt_dir, zone_width=2)
    assert result.vague_excluded is None and result.primary is result.all_pixels
    assert result.all_pixels.mean["aji"] == 1.0 and result.settings()["zone_width"] == 2


@requires_shared_data
def test_shared_spleen_counts_match_the_data_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred_dir = tmp_path / "pred"
    shutil.copytree(SHARED_SPLEEN / "label masks modify", pred_dir)
    argv = ["evaluate", "--pred", str(pred_dir), "--data", str(SHARED_SPLEEN), "--json"]
    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["n_images"] == 34 and summary["n_with_vague_area"] == 34  # as `data info` counts
    assert summary["all_pixels"]["n_gt"] == 3286  # as `nucleisam data info` reports
    assert summary["all_pixels"]["pooled"]["aji"] == 1.0


def test_shape_mismatch_names_both_files_and_writes_nothing(
    sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    path = label_paths(sample_root)[0]
    tifffile.imwrite(pred_dir / path.name, tifffile.imread(path)[:256])
    out = tmp_path / "out"
    code, _, stderr = run_cli(["evaluate", "--pred", str(pred_dir), "--data", str(sample_root),
                               "--out", str(out)], capsys)
    assert code == 2
    assert str(pred_dir / path.name) in stderr and str(path) in stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "no label maps"),
        (lambda d: np.save(d / "other_stem.npy", np.zeros((4, 4), np.int32)), "no prediction"),
        (lambda d: np.save(d / "human_spleen_01.npy", np.zeros((512, 512), np.float32) + 0.5), "float"),
        (lambda d: (np.save(d / "human_spleen_01.npy", np.zeros((2, 2), np.int32)),
                    tifffile.imwrite(d / "human_spleen_01.tif", np.zeros((2, 2), np.uint16))), "two files"),
    ],
)
def test_bad_prediction_folders_are_clear_errors(
    make, message: str, sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    make(pred_dir)
    code, _, stderr = run_cli(["evaluate", "--pred", str(pred_dir), "--data", str(sample_root)], capsys)
    assert code == 2 and message in stderr


def test_ground_truth_source_is_required_and_exclusive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--pred", str(tmp_path)])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["evaluate", "--pred", str(tmp_path), "--masks", str(tmp_path), "--data", str(tmp_path)])
    argv = ["evaluate", "--pred", str(tmp_path / "nope"), "--masks", str(tmp_path)]
    code, _, stderr = run_cli(argv, capsys)
    assert code == 2 and "--pred" in stderr


def test_binary_predictions_need_binary_masks(sample_root: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    path = label_paths(sample_root)[0]
    Image.fromarray(((tifffile.imread(path) > 0) * 255).astype(np.uint8)).save(pred_dir / f"{path.stem}.png")
    code, _, stderr = run_cli(["evaluate", "--pred", str(pred_dir), "--data", str(sample_root)], capsys)
    assert code == 2 and "--binary-masks" in stderr
    argv = ["evaluate", "--pred", str(pred_dir), "--data", str(sample_root), "--binary-masks", "--json"]
    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0 and json.loads(stdout)["all_pixels"]["n_pred"] > 0



def test_predict_output_folder_is_evaluated_as_it_is(sample_root: Path, tmp_path: Path, capsys) -> None:
    """`nucleisam predict` writes <stem>_labels.tif beside overlays and CSVs; evaluate pairs those
    label maps with the ground truth of <stem> and scores them like plainly named files."""
    images = sample_root / "human spleen" / "tissue images"
    predicted = tmp_path / "pred"
    assert main(["predict", str(images), "--method", "classical", "--formats", "tiff,overlay",
                 "--out", str(predicted)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(predicted), "--data", str(sample_root), "--json"]) == 0
    via_predict = json.loads(capsys.readouterr().out)
    assert via_predict["vague_excluded"]["n_images"] == 6
    plain = tmp_path / "plain"
    plain.mkdir()
    for path in predicted.glob("*_labels.tif"):
        shutil.copy(path, plain / path.name.replace("_labels", ""))
    assert main(["evaluate", "--pred", str(plain), "--data", str(sample_root), "--json"]) == 0
    plainly_named = json.loads(capsys.readouterr().out)
    assert via_predict["unmatched_predictions"] == []  # the overlay pictures are not label maps
    for variant in ("vague_excluded", "all_pixels"):
        assert plainly_named[variant] == via_predict[variant]


def _xml(labels: np.ndarray) -> str:
    """MoNuSeg-style Aperio XML: one square Region per nucleus, around its bounding box."""
    regions = []
    for index, value in enumerate(v for v in np.unique(labels) if v):
        rows, cols = np.nonzero(labels == value)
        top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
        vertices = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in
                           [(left, top), (right, top), (right, bottom), (left, bottom)])
        regions.append(f'<Region Id="{index + 1}"><Vertices>{vertices}</Vertices></Region>')
    return f"<Annotations><Annotation><Regions>{''.join(regions)}</Regions></Annotation></Annotations>"


def test_xml_ground_truth_is_read_as_the_data_commands_read_it(
    sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Images with .xml annotations beside them (--data) or in another folder (--images + --gt):
    predictions equal to the rasterised XML score 1.0."""
    from nucleisam.data import open_dataset

    beside, annotations = tmp_path / "monuseg", tmp_path / "annotations"
    beside.mkdir()
    annotations.mkdir()
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for path in label_paths(sample_root)[:2]:
        image = sample_root / ORGAN / "tissue images" / f"{path.stem}.png"
        shutil.copy(image, beside / image.name)
        xml = _xml(tifffile.imread(path))
        (beside / f"{path.stem}.xml").write_text(xml)
        (annotations / f"{path.stem}.xml").write_text(xml)
    for sample in open_dataset(beside):
        tifffile.imwrite(pred_dir / f"{sample.stem}_labels.tif", sample.load_labels())
    for source in (["--data", str(beside)], ["--images", str(beside), "--masks", str(annotations)]):
        code, stdout, err = run_cli(["evaluate", "--pred", str(pred_dir), *source, "--json"], capsys)
        assert code == 0, err
        summary = json.loads(stdout)
        assert summary["n_images"] == 2 and summary["all_pixels"]["mean"]["aji"] == 1.0


def test_evaluate_refuses_to_overwrite_results_unless_asked(
    predictions: Path, sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", "--pred", str(predictions), "--data", str(sample_root), "--out", str(out)]
    assert run_cli(argv, capsys)[0] == 0
    (out / "summary.md").write_text("my notes")
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "per_image.csv already exists" in err and "--overwrite" in err
    assert (out / "summary.md").read_text() == "my notes"
    assert run_cli([*argv, "--overwrite"], capsys)[0] == 0
    assert "mean ± std" in (out / "summary.md").read_text()
