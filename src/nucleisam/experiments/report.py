"""Run reports: ``report.md`` from a cross-validation summary, ``curves.png``, and overlay PNGs.

The summary is the dict saved as ``summary.json`` by the cross-validation runner. The parts read here:

- ``command`` (str), ``aggregation`` (str), ``k`` (int), ``n_images`` (int), ``select_metric``;
  optionally ``mpp`` (the images' µm per pixel, ``data.mpp``) and ``mpp_source`` (where it came from);
- ``primary_method``: the method of the per-fold and per-organ tables, ``watershed`` (default: a
  model run, ``nucleisam cv``) or ``classical`` (a run without a model, ``nucleisam baseline``);
- ``methods``: name → ``{"label": str, "per_fold": [{"vague_excluded": {metric: v}, "all_pixels":
  {...}}], "mean": {"vague_excluded": {...}, "all_pixels": {...}}, "std": {...}}``; the names
  ``watershed`` (model + tuned watershed), ``connected_components`` (model, thresholded
  foreground, connected components) and ``classical`` (no model) are listed in that order;
- ``folds``: ``[{"fold", "n_train", "n_val", "n_test", "seconds", ...}]``, optionally with
  ``best_epoch`` and ``best_val`` (the model's selected epoch and its validation score),
  ``val_default`` (the validation score of the starting parameters), ``val_tuned`` (metric → validation
  score after tuning) and ``classical_params`` (the classical baseline's tuned parameters);
- ``per_organ``: organ → ``{"n_images": int, metric: per-image mean}`` (primary method, vague
  excluded);
- ``parameters``: ``{"total", "trainable", ...}``; optional ``notes`` (list of str).

Every number in the report says which aggregation it is; published numbers are labelled as such.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucleisam.utils.atomic import atomic_output, write_text_atomic

#: Metrics in report tables, in this order, with their column titles.
REPORT_METRICS: dict[str, str] = {
    "dice": "Dice",
    "aji": "AJI",
    "aji_plus": "AJI+",
    "pq": "PQ",
    "dq": "DQ",
    "sq": "SQ",
    "msa": "mSA",
}

METHOD_ORDER = ("watershed", "connected_components", "classical")

#: Published numbers printed beside ours (DESIGN.md §6). Not computed by this tool.
REFERENCE_RESULTS: tuple[dict[str, Any], ...] = (
    {
        "source": "NuInsSeg paper (Mahbod et al., Sci Data 11:295, 2024), U-Net family, 5-fold image split",
        "dataset": "NuInsSeg",
        "dice": "0.766–0.814",
        "aji": "0.457–0.559",
        "pq": "0.364–0.513",
        "note": "best: dual-decoder U-Net, AJI 0.559 / PQ 0.513",
    },
    {
        "source": "Starting notebook (MobileSAM + LoRA, 10 epochs)",
        "dataset": "NuInsSeg",
        "dice": "0.674",
        "aji": "0.423*",
        "pq": "0.398*",
        "note": "*binary metrics mislabelled as instance metrics: not comparable",
    },
    {
        "source": "HoVer-Net (Graham et al., 2019)",
        "dataset": "MoNuSeg (other data)",
        "dice": "0.826",
        "aji": "0.618–0.641",
        "pq": "0.597",
        "note": "different dataset: context only",
    },
)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value), NaN-free input assumed."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return float("nan"), float("nan")
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return float(array.mean()), std


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return "–" if not np.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _methods(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    methods = summary.get("methods", {})
    ordered = [name for name in METHOD_ORDER if name in methods]
    ordered += sorted(name for name in methods if name not in METHOD_ORDER)
    return [(name, methods[name]) for name in ordered]


def _results_table(summary: Mapping[str, Any], variant: str) -> str:
    rows = []
    for _, method in _methods(summary):
        mean, std = method["mean"].get(variant, {}), method["std"].get(variant, {})
        cells = [method.get("label", "")]
        for metric in REPORT_METRICS:
            m, s = mean.get(metric), std.get(metric)
            cells.append("–" if m is None else f"{m:.3f} ± {s:.3f}")
        rows.append(cells)
    return _table(["Method", *REPORT_METRICS.values()], rows)


def _intro(summary: Mapping[str, Any], metric: str) -> list[str]:
    k = summary.get("k", len(summary.get("folds", [])))
    scale = ""
    if "mpp" in summary:
        scale = f" at {summary['mpp']:g} µm/px ({summary.get('mpp_source', 'data.mpp')})"
    images = f"{summary.get('n_images', '?')} images{scale}, {k} folds."
    if summary.get("primary_method", "watershed") == "classical":
        return [
            "# nucleisam classical baseline report",
            "",
            f"{images} No model: nuclei from the hematoxylin optical density (colour deconvolution), "
            "Gaussian smoothing, an Otsu threshold, hole filling and a distance-transform watershed. Each "
            f"fold: the parameters tuned for mean {metric} on its validation images, test images scored. "
            "`nucleisam cv` on the same `folds.json` puts a fine-tuned model beside these numbers.",
        ]
    return [
        "# nucleisam cross-validation report",
        "",
        f"{images} Each fold: a fresh model trained on its training images, the epoch with the best "
        f"post-processed mean {metric} on its validation images kept, post-processing tuned on the "
        "validation images, test images scored at native resolution.",
    ]


def _per_fold_table(summary: Mapping[str, Any], primary: Mapping[str, Any] | None, metric: str) -> str:
    """Fold sizes, validation scores (those the folds have) and the primary method's test scores."""
    folds = summary["folds"]
    select = summary.get("select_metric", "aji")
    columns: list[tuple[str, Callable[[int, Mapping[str, Any]], Any]]] = [
        ("Fold", lambda i, f: f.get("fold", i)),
        ("Train", lambda i, f: f.get("n_train")),
        ("Val", lambda i, f: f.get("n_val")),
        ("Test", lambda i, f: f.get("n_test")),
    ]
    if any("best_epoch" in f for f in folds):
        columns += [
            ("Best epoch", lambda i, f: f.get("best_epoch")),
            (f"Val {metric}, best epoch", lambda i, f: f.get("best_val")),
        ]
    if any("val_default" in f for f in folds):
        columns.append((f"Val {metric}, default", lambda i, f: f.get("val_default")))
    if any("val_tuned" in f for f in folds):
        columns.append((f"Val {metric}, tuned", lambda i, f: (f.get("val_tuned") or {}).get(select)))
    columns += [
        (name, lambda i, f, key=key: primary["per_fold"][i]["vague_excluded"].get(key) if primary else None)
        for key, name in REPORT_METRICS.items()
    ]
    rows = [[value(i, fold) for _, value in columns] for i, fold in enumerate(folds)]
    return _table([name for name, _ in columns], rows)


def _classical_parameters_table(folds: Sequence[Mapping[str, Any]]) -> str:
    names = list(dict.fromkeys(name for fold in folds for name in fold.get("classical_params", {})))
    rows = [
        [fold.get("fold", i), *(fold["classical_params"].get(n) for n in names)]
        for i, fold in enumerate(folds)
        if "classical_params" in fold
    ]
    return _table(["Fold", *(n.replace("_", " ") for n in names)], rows)


def render_report(summary: Mapping[str, Any], *, figures: Sequence[str] = ()) -> str:
    """Markdown text of the report (see the module docstring for the summary's layout)."""
    metric = REPORT_METRICS.get(summary.get("select_metric", "aji"), "AJI")
    out = _intro(summary, metric)
    out += ["", f"**Aggregation:** {summary.get('aggregation', 'not stated')}", ""]
    for note in summary.get("notes", []):
        out.append(f"> {note}")
    if summary.get("notes"):
        out.append("")

    out += ["## Test results, vague areas excluded (NucEval convention)", ""]
    out += [
        "Instances with more than 25% of their area in a vague area are removed from ground truth and "
        "prediction, then vague pixels are ignored.",
        "",
        _results_table(summary, "vague_excluded"),
        "",
    ]
    out += ["## Test results, all pixels", "", _results_table(summary, "all_pixels"), ""]

    primary_name = summary.get("primary_method", "watershed")
    primary = summary.get("methods", {}).get(primary_name)
    primary_label = primary["label"] if primary else primary_name
    folds = summary.get("folds", [])
    if folds:
        out += [f"## Per fold: {primary_label}, vague areas excluded, per-image mean", ""]
        out += [_per_fold_table(summary, primary, metric), ""]
    if any("classical_params" in fold for fold in folds):
        out += ["## Classical baseline parameters tuned per fold", ""]
        out += [_classical_parameters_table(folds), ""]

    per_organ = summary.get("per_organ", {})
    if per_organ:
        out += [
            f"## Per organ: {primary_label}, vague areas excluded, per-image mean over test images",
            "",
        ]
        rows = [
            [organ, values.get("n_images"), *(values.get(metric) for metric in REPORT_METRICS)]
            for organ, values in sorted(per_organ.items())
        ]
        out += [_table(["Organ", "Images", *REPORT_METRICS.values()], rows), ""]

    params = summary.get("parameters", {})
    if params:
        out += ["## Parameters", ""]
        rows = [[name.replace("_", " "), value] for name, value in params.items()]
        out += [_table(["", "Count"], rows), ""]

    out += ["## Published reference numbers (not computed here)", ""]
    rows = [[r["source"], r["dataset"], r["dice"], r["aji"], r["pq"], r["note"]] for r in REFERENCE_RESULTS]
    out += [_table(["Source", "Data", "Dice", "AJI", "PQ", "Note"], rows), ""]
    out += [
        "Published values are as reported by their authors (their own folds and aggregation); ours are on "
        "the data and folds of this run.",
        "",
    ]

    if figures:
        out += ["## Figures", ""]
        out += [f"![{Path(name).stem}]({name})" for name in figures]
        out.append("")

    out += ["## How to reproduce", "", "```bash", str(summary.get("command", "")), "```", ""]
    out.append("The resolved configuration is `config.yaml` and the folds are `folds.json` in this folder.")
    return "\n".join(out) + "\n"


def write_report(
    summary: Mapping[str, Any], out_dir: str | os.PathLike[str], *, figures: Sequence[str] = ()
) -> Path:
    """Write ``report.md`` into ``out_dir`` atomically; ``figures`` are paths relative to it."""
    return write_text_atomic(Path(out_dir) / "report.md", render_report(summary, figures=figures))


def plot_curves(
    histories: Mapping[int, Sequence[Mapping[str, float]]],
    path: str | os.PathLike[str],
    *,
    metric: str = "aji",
) -> Path:
    """``curves.png``: training loss (left) and validation ``metric`` (right) per epoch, one line per fold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for fold, rows in sorted(histories.items()):
        epochs = [row["epoch"] for row in rows]
        ax_loss.plot(
            epochs, [row.get("train_loss", np.nan) for row in rows], marker="o", ms=3, label=f"fold {fold}"
        )
        val = [(row["epoch"], row[f"val_{metric}"]) for row in rows if f"val_{metric}" in row]
        if val:
            ax_val.plot(*zip(*val, strict=True), marker="o", ms=3, label=f"fold {fold}")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_val.set(
        xlabel="epoch", ylabel=f"validation mean {metric}", title=f"Validation {metric} (post-processed)"
    )
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def overlay_contours(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB uint8 image with ground-truth contours in green and predicted contours in magenta
    (white where they coincide)."""
    from skimage.segmentation import find_boundaries

    out = np.array(image, dtype=np.uint8, copy=True)
    gt_edge = find_boundaries(truth, mode="inner")
    pred_edge = find_boundaries(prediction, mode="inner")
    out[gt_edge] = (0, 220, 0)
    out[pred_edge] = (255, 0, 255)
    out[gt_edge & pred_edge] = (255, 255, 255)
    return out


def write_overlay(
    path: str | os.PathLike[str], image: np.ndarray, truth: np.ndarray, prediction: np.ndarray
) -> Path:
    """Save :func:`overlay_contours` as a PNG, atomically."""
    from PIL import Image

    with atomic_output(path) as tmp:
        Image.fromarray(overlay_contours(image, truth, prediction)).save(tmp, format="PNG")
    return Path(path)
