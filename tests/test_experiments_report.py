"""Report writer: Markdown content from a summary, curves and overlays written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nucleisam.experiments.report import (
    REFERENCE_RESULTS,
    mean_std,
    overlay_contours,
    plot_curves,
    render_report,
    write_overlay,
    write_report,
)

METRICS = ("dice", "aji", "aji_plus", "pq", "dq", "sq", "msa")


def _method(label: str, base: float) -> dict:
    per_fold = [
        {
            "vague_excluded": {m: base + 0.01 * f for m in METRICS},
            "all_pixels": {m: base - 0.05 + 0.01 * f for m in METRICS},
        }
        for f in range(3)
    ]
    mean, std = {}, {}
    for variant in ("vague_excluded", "all_pixels"):
        stats = {m: mean_std([fold[variant][m] for fold in per_fold]) for m in METRICS}
        mean[variant] = {m: s[0] for m, s in stats.items()}
        std[variant] = {m: s[1] for m, s in stats.items()}
    return {"label": label, "per_fold": per_fold, "mean": mean, "std": std}


def _summary() -> dict:
    return {
        "command": "nucleisam cv --data 'examples/NuInsSeg' --out run",
        "aggregation": "per-image mean within each fold; mean ± sample std over folds",
        "k": 3,
        "n_images": 6,
        "select_metric": "aji",
        "methods": {
            "classical": _method("classical baseline (no model)", 0.40),
            "watershed": _method("model + tuned watershed", 0.60),
            "connected_components": _method("model + connected components", 0.50),
        },
        "folds": [
            {
                "fold": f,
                "n_train": 3,
                "n_val": 1,
                "n_test": 2,
                "best_epoch": 2,
                "best_val": 0.5,
                "seconds": 1.0,
            }
            for f in range(3)
        ],
        "per_organ": {"human spleen": {"n_images": 6, **{m: 0.61 for m in METRICS}}},
        "parameters": {"total": 10_254_156, "trainable": 4_182_404},
        "notes": ["random initial weights: these numbers say nothing about pretrained quality"],
    }


def test_mean_std() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_report_content(tmp_path: Path) -> None:
    path = write_report(_summary(), tmp_path, figures=["curves.png", "overlays/a.png"])
    text = path.read_text()
    lines = text.splitlines()
    # Rows in a fixed order: the model first, the classical baseline last; mean ± std over 3 folds.
    rows = [line for line in lines if line.startswith("| model") or line.startswith("| classical")]
    assert rows[0].startswith("| model + tuned watershed | 0.610 ± 0.010 |")
    assert rows[1].startswith("| model + connected components | 0.510 ± 0.010 |")
    assert rows[2].startswith("| classical baseline (no model) | 0.410 ± 0.010 |")
    assert "| model + tuned watershed | 0.560 ± 0.010 |" in text  # all-pixels table
    assert "vague areas excluded" in text and "Test results, all pixels" in text
    assert "**Aggregation:** per-image mean within each fold; mean ± sample std over folds" in text
    assert "| human spleen | 6 | 0.610 |" in text
    assert "| total | 10,254,156 |" in text and "| trainable | 4,182,404 |" in text
    assert "Published reference numbers (not computed here)" in text
    for ref in REFERENCE_RESULTS:
        assert ref["source"] in text
    assert "```bash\nnucleisam cv --data 'examples/NuInsSeg' --out run\n```" in text
    assert "![curves](curves.png)" in text and "> random initial weights" in text
    assert "| 2 | 3 | 1 | 2 | 2 | 0.500 | 0.620 |" in text  # per-fold row of fold 2
    assert not list(tmp_path.glob("*.part"))


def _section(text: str, heading: str) -> str:
    """The report section whose ``## `` heading starts with ``heading`` (up to the next section)."""
    start = text.index(f"\n## {heading}") + 1
    end = text.find("\n## ", start)
    return text[start : end if end >= 0 else None]


def _rows(section: str) -> list[list[str]]:
    """Cells of the Markdown table rows of ``section`` (header included, separator left out)."""
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ")
    ]
    return [row for row in rows if set(row) != {"---"}]


@pytest.mark.parametrize(
    ("heading", "variant"),
    [
        ("Test results, vague areas excluded (NucEval convention)", "vague_excluded"),
        ("Test results, all pixels", "all_pixels"),
    ],
)
def test_results_tables_hold_the_summary_numbers(heading: str, variant: str) -> None:
    summary = _summary()
    header, *rows = _rows(_section(render_report(summary), heading))
    assert header == ["Method", "Dice", "AJI", "AJI+", "PQ", "DQ", "SQ", "mSA"]
    order = ("watershed", "connected_components", "classical")
    assert [row[0] for row in rows] == [summary["methods"][name]["label"] for name in order]
    for row, name in zip(rows, order, strict=True):
        method = summary["methods"][name]
        mean, std = method["mean"][variant], method["std"][variant]
        assert row[1:] == [f"{mean[m]:.3f} ± {std[m]:.3f}" for m in METRICS]


def test_per_fold_table_holds_each_folds_numbers() -> None:
    summary = _summary()
    section = _section(render_report(summary), "Per fold: model + tuned watershed, vague areas excluded")
    header, *rows = _rows(section)
    assert header[:6] == ["Fold", "Train", "Val", "Test", "Best epoch", "Val AJI, best epoch"]
    per_fold = summary["methods"]["watershed"]["per_fold"]
    for row, fold, scores in zip(rows, summary["folds"], per_fold, strict=True):
        assert row[:5] == [str(fold[k]) for k in ("fold", "n_train", "n_val", "n_test", "best_epoch")]
        assert row[5] == f"{fold['best_val']:.3f}"
        assert row[6:] == [f"{scores['vague_excluded'][m]:.3f}" for m in METRICS]


def test_reference_numbers_are_labelled_as_published() -> None:
    section = _section(render_report(_summary()), "Published reference numbers (not computed here)")
    header, *rows = _rows(section)
    assert header == ["Source", "Data", "Dice", "AJI", "PQ", "Note"]
    keys = ("source", "dataset", "dice", "aji", "pq", "note")
    assert rows == [[ref[k] for k in keys] for ref in REFERENCE_RESULTS]
    assert "Published values are as reported by their authors" in section


def test_report_without_optional_parts() -> None:
    summary = _summary()
    del summary["methods"]["classical"], summary["per_organ"], summary["parameters"], summary["notes"]
    text = render_report(summary)
    assert "classical" not in text and "Per organ" not in text and "## Parameters" not in text
    assert "Figures" not in text and "> " not in text
    # What remains is complete: both model rows with their numbers, the folds, the references.
    rows = _rows(_section(text, "Test results, all pixels"))
    assert [row[:2] for row in rows[1:]] == [
        ["model + tuned watershed", "0.560 ± 0.010"],
        ["model + connected components", "0.460 ± 0.010"],
    ]
    assert len(_rows(_section(text, "Per fold: model + tuned watershed"))) == 1 + len(summary["folds"])
    assert all(ref["aji"] in text for ref in REFERENCE_RESULTS)


def test_classical_report_shows_tuning_per_fold() -> None:
    summary = _summary()
    summary["primary_method"] = "classical"
    summary["methods"] = {"classical": summary["methods"]["classical"]}
    for fold in summary["folds"]:
        del fold["best_epoch"], fold["best_val"]
        fold.update(val_default=0.3, val_tuned={"aji": 0.35 + 0.01 * fold["fold"]})
        fold["classical_params"] = {"sigma": 1.0, "min_area": 30}
    text = render_report(summary)
    assert text.startswith("# nucleisam classical baseline report\n")
    assert "No model: nuclei from the hematoxylin optical density" in text and "Best epoch" not in text
    header, *rows = _rows(_section(text, "Per fold: classical baseline (no model), vague areas excluded"))
    assert header[:6] == ["Fold", "Train", "Val", "Test", "Val AJI, default", "Val AJI, tuned"]
    # Validation AJI before and after tuning, then the test Dice of the fold (0.40 + 0.01 × fold).
    assert [row[4:7] for row in rows] == [["0.300", f"0.{35 + f}0", f"0.{40 + f}0"] for f in range(3)]
    header, *rows = _rows(_section(text, "Classical baseline parameters tuned per fold"))
    assert header == ["Fold", "sigma", "min area"] and rows == [[str(f), "1.000", "30"] for f in range(3)]


def test_curves_png(tmp_path: Path) -> None:
    histories = {
        f: [{"epoch": e, "train_loss": 1.0 / e, "val_aji": 0.1 * e + f} for e in range(1, 4)]
        for f in range(2)
    }
    path = plot_curves(histories, tmp_path / "curves.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 500


def test_overlay_marks_contours(tmp_path: Path) -> None:
    image = np.full((20, 20, 3), 128, np.uint8)
    truth = np.zeros((20, 20), np.int32)
    truth[2:8, 2:8] = 1
    pred = np.zeros_like(truth)
    pred[2:8, 2:8] = 4  # identical nucleus → white contour
    pred[12:18, 12:18] = 5  # false positive → magenta
    out = overlay_contours(image, truth, pred)
    assert tuple(out[2, 2]) == (255, 255, 255) and tuple(out[12, 12]) == (255, 0, 255)
    assert tuple(out[5, 5]) == (128, 128, 128)  # interiors untouched
    truth[12:18, 12:18] = 2
    pred[12:18, 12:18] = 0
    assert tuple(overlay_contours(image, truth, pred)[12, 12]) == (0, 220, 0)  # missed nucleus → green
    path = write_overlay(tmp_path / "o.png", image, truth, pred)
    assert np.array_equal(np.asarray(Image.open(path)), overlay_contours(image, truth, pred))


def test_csv_rows_round_trip_with_missing_cells(tmp_path: Path) -> None:
    from nucleisam.utils.tables import read_rows_csv, write_rows_csv

    rows = [
        {"epoch": 1, "loss": 0.5},
        {"epoch": 2, "loss": 0.25, "val_aji": 0.125},
        {"stem": "007", "loss": 1.0},
    ]
    path = write_rows_csv(tmp_path / "t.csv", rows)
    assert path.read_text().splitlines()[0] == "epoch,loss,val_aji,stem"
    back = read_rows_csv(path, text_columns={"stem"})
    assert back == [
        {"epoch": 1.0, "loss": 0.5},
        {"epoch": 2.0, "loss": 0.25, "val_aji": 0.125},
        {"loss": 1.0, "stem": "007"},
    ]
    assert read_rows_csv(tmp_path / "missing.csv") == []
