"""The folder of a cross-validation run, whatever the method (``nucleisam cv``, ``nucleisam baseline``).

Layout (README, "Outputs of a run"): ``config.yaml`` (the resolved configuration), ``folds.json``,
per fold ``fold_<i>/per_image.csv`` and ``fold_<i>/metrics.json`` (written last: it marks the fold
finished, so a resumed run skips it), then ``summary.json``, ``report.md`` and ``overlays/``.

This module holds the runner's (:mod:`nucleisam.experiments.cv`) bookkeeping and no model: the
per-method scoring of a fold's test images (:class:`MethodScores`), the summary over folds
(:func:`summarize_folds`, layout in :mod:`nucleisam.experiments.report`), and the checks made before
anything is written (:func:`check_run_folder`, :func:`open_run_data`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucleisam import __version__
from nucleisam.config import NUINSSEG_MPP, DataConfig, load_config, to_dict
from nucleisam.data.datasets import Dataset, Sample, open_dataset
from nucleisam.data.folds import FoldManifest, make_folds
from nucleisam.data.resolution import DataResolution, resolve_data_mpp
from nucleisam.data.summary import check_samples, usable_dataset
from nucleisam.errors import NucleisamError
from nucleisam.experiments.report import REPORT_METRICS, mean_std
from nucleisam.metrics import MetricAccumulator
from nucleisam.utils.tables import read_rows_csv

CONFIG_FILE = "config.yaml"
FOLDS_FILE = "folds.json"
SUMMARY_FILE = "summary.json"
FOLD_METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.csv"
OVERLAY_DIR = "overlays"

#: Ways test images are turned into instances, in report order, with their labels.
METHOD_LABELS = {
    "watershed": "model + tuned watershed",
    "connected_components": "model + connected components",
    "classical": "classical baseline (no model)",
}
VARIANTS = ("vague_excluded", "all_pixels")
#: Columns of per_image.csv that hold names; every other column is numeric.
TEXT_COLUMNS = {"stem", "organ", "method", "variant"}
AGGREGATION = (
    "per-image mean over each fold's test images; mean ± sample std (ddof=1) over folds. "
    "Per-organ values: per-image mean over all test images of the organ. Pooled and nuclei-weighted "
    "values per fold are in each fold's metrics.json."
)
#: Entries of a fold's metrics.json copied into the summary's ``folds`` list (those present).
FOLD_SUMMARY_KEYS = (
    "fold",
    "n_train",
    "n_val",
    "n_test",
    "best_epoch",
    "best_val",
    "val_default",
    "val_tuned",
    "classical_params",
    "seconds",
)

#: Options that change how a run executes, not what it computes: they may differ on --resume.
RUNTIME_KEYS = frozenset(
    {"train.num_workers", "train.progress", "train.device", "data.cache", "data.cache_dir"}
)

Log = Callable[[str], None]


def fold_dir(out_dir: Path, index: int) -> Path:
    return out_dir / f"fold_{index}"


class MethodScores:
    """Per-image metrics of one fold's test images for each (method, variant).

    ``update`` scores one prediction twice: with the vague areas excluded (NucEval's rule) and over
    all pixels. ``rows`` are the lines of ``per_image.csv``; ``compute`` gives the aggregates saved
    in ``metrics.json`` under ``test``.
    """

    def __init__(self) -> None:
        self.accumulators: dict[tuple[str, str], MetricAccumulator] = {}
        self.rows: list[dict[str, Any]] = []

    def update(
        self,
        method: str,
        sample: Sample,
        labels: np.ndarray,
        prediction: np.ndarray,
        vague: np.ndarray | None = None,
    ) -> None:
        """Score ``prediction`` (H, W int) against ``labels`` (H, W int) of ``sample``."""
        for variant in VARIANTS:
            vague = vague if variant == "vague_excluded" else None
            accumulator = self.accumulators.setdefault((method, variant), MetricAccumulator())
            metrics = accumulator.update(labels, prediction, vague, key=sample.stem)
            self.rows.append(
                {"stem": sample.stem, "organ": sample.group, "method": method, "variant": variant, **metrics}
            )

    def compute(self) -> dict[str, dict[str, dict[str, Any]]]:
        """method → variant → {"mean", "std", "pooled", "weighted_mean", "n_images"}."""
        result: dict[str, dict[str, dict[str, Any]]] = {}
        for (method, variant), accumulator in self.accumulators.items():
            computed = accumulator.compute()
            result.setdefault(method, {})[variant] = {
                "mean": computed.mean,
                "std": computed.std,
                "pooled": computed.pooled,
                "weighted_mean": computed.weighted_mean,
                "n_images": computed.n_images,
            }
        return result


def read_per_image(out_dir: Path, folds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ``per_image.csv`` rows of the given finished folds, in fold order."""
    return [
        row
        for fold in folds
        for row in read_rows_csv(fold_dir(out_dir, fold["fold"]) / PER_IMAGE_FILE, text_columns=TEXT_COLUMNS)
    ]


def summarize_folds(
    folds: Sequence[Mapping[str, Any]],
    per_image: Sequence[Mapping[str, Any]],
    *,
    k: int,
    select_metric: str,
    command: str,
    n_images: int,
    primary_method: str = "watershed",
    notes: Sequence[str] = (),
    resolution: DataResolution | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` dict (layout in :mod:`nucleisam.experiments.report`) from the finished folds'
    ``metrics.json`` dicts and their ``per_image.csv`` rows; the per-organ table and the report's
    per-fold table are of ``primary_method``; ``resolution`` is the images' (``data.mpp``)."""
    methods: dict[str, Any] = {}
    for method, method_label in METHOD_LABELS.items():
        if not folds or not all(method in fold.get("test", {}) for fold in folds):
            continue
        per_fold = [{v: fold["test"][method][v]["mean"] for v in VARIANTS} for fold in folds]
        mean: dict[str, dict[str, float]] = {}
        std: dict[str, dict[str, float]] = {}
        for variant in VARIANTS:
            stats = {m: mean_std([f[variant][m] for f in per_fold]) for m in per_fold[0][variant]}
            mean[variant] = {m: s[0] for m, s in stats.items()}
            std[variant] = {m: s[1] for m, s in stats.items()}
        methods[method] = {"label": method_label, "per_fold": per_fold, "mean": mean, "std": std}
    per_organ: dict[str, dict[str, Any]] = {}
    for row in per_image:
        if row["method"] == primary_method and row["variant"] == "vague_excluded":
            per_organ.setdefault(str(row["organ"]), {"rows": []})["rows"].append(row)
    for entry in per_organ.values():
        rows = entry.pop("rows")
        entry["n_images"] = len(rows)
        entry.update({m: float(np.mean([r[m] for r in rows])) for m in REPORT_METRICS})
    return {
        "nucleisam_version": __version__,
        "command": command,
        "aggregation": AGGREGATION,
        "k": k,
        "folds_completed": len(folds),
        "n_images": n_images,
        **({"mpp": resolution.mpp, "mpp_source": resolution.source} if resolution is not None else {}),
        "select_metric": select_metric,
        "primary_method": primary_method,
        "methods": methods,
        "folds": [{key: fold[key] for key in FOLD_SUMMARY_KEYS if key in fold} for fold in folds],
        "per_organ": per_organ,
        "parameters": folds[0].get("parameters", {}) if folds else {},
        "notes": list(notes),
    }


def summary_table(summary: Mapping[str, Any], variant: str = "vague_excluded") -> str:
    """Plain-text table of mean ± std per method (for the console)."""
    names = list(REPORT_METRICS.values())
    lines = [f"{'':34s}" + "".join(f"{n:>16s}" for n in names)]
    for method in summary["methods"].values():
        cells = "".join(
            f"{method['mean'][variant][m]:>9.3f} ± {method['std'][variant][m]:.3f}" for m in REPORT_METRICS
        )
        lines.append(f"{method['label']:34s}{cells}")
    return "\n".join(lines)


# -- before a run writes anything -------------------------------------------------------------------


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def check_run_folder(out_dir: Path, config: Any, *, resume: bool) -> None:
    """A folder already holding a run (its ``config.yaml``) is only continued with ``resume`` and a
    configuration (a config dataclass) equal to the saved one, apart from :data:`RUNTIME_KEYS`."""
    path = out_dir / CONFIG_FILE
    if not path.exists():
        return
    if not resume:
        raise NucleisamError(
            f"{out_dir} already holds a run ({CONFIG_FILE}); continue it (resume) or choose another output "
            "folder (out)."
        )
    old, new = _flatten(to_dict(load_config(type(config), path))), _flatten(to_dict(config))
    if "data.mpp" in old and old["data.mpp"] is None:  # a run from before data.mpp: it assumed NuInsSeg's
        old["data.mpp"] = NUINSSEG_MPP
    changed = sorted(k for k in old.keys() | new.keys() if k not in RUNTIME_KEYS and old.get(k) != new.get(k))
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in changed[:6])
        raise NucleisamError(
            f"cannot resume (resume): the configuration differs from the run's {path} ({details}). Resume "
            "with the same options, e.g. that file as the configuration (config), or start a new run in "
            "another output folder (out)."
        )


def _open_data(data: DataConfig) -> Dataset:
    """The data set of ``data`` (files listed and headers read, nothing decoded)."""
    if data.root is None and data.images is None:
        raise NucleisamError(
            "no data: set data.root (a NuInsSeg-layout folder), or data.images with data.masks (folders "
            "of images and label maps)."
        )
    return open_dataset(
        data.root, images=data.images, masks=data.masks, binary_masks=data.binary_masks, strict=data.strict
    )


def resolve_run_mpp(data: DataConfig, *, log: Log = print) -> DataResolution:
    """The resolution of ``data``'s images (:func:`nucleisam.data.resolve_data_mpp`: ``data.mpp``, else
    what the images record, else NuInsSeg's), any warning about it logged."""
    dataset = _open_data(data)
    resolution = resolve_data_mpp(
        data.mpp, [sample.image_path for sample in dataset], nuinsseg_layout=dataset.layout == "nuinsseg"
    )
    if resolution.warning is not None:
        log(f"warning: {resolution.warning}")
    return resolution


def open_run_data(
    data: DataConfig, folds_path: Path | None, *, log: Log = print
) -> tuple[list[Sample], FoldManifest | None]:
    """Open the data of ``data`` and its folds: the manifest at ``folds_path`` when that file exists
    (it must match the data), else new folds from ``data``'s k/seed/group/val_fraction/val_seed; no
    folds when ``folds_path`` is None.

    Every image, label map and vague mask is decoded once here, before the run writes anything: a
    half-written file is a problem now, not a crash after the first fold. Problems are logged as
    warnings and their samples left out (``data.strict``: an error).
    """
    dataset = _open_data(data)
    dataset = usable_dataset(dataset, check_samples(dataset.samples), strict=data.strict)
    for problem in dataset.problems:
        log(f"warning: {problem}")
    samples = list(dataset.samples)
    if not samples:
        raise NucleisamError(
            f"no usable images in the data ({len(dataset.problems)} problem(s) listed above); fix them or "
            "point data.root at another folder."
        )
    if folds_path is None:
        return samples, None
    if folds_path.exists():
        return samples, FoldManifest.load(folds_path, samples=samples)
    manifest = make_folds(
        samples,
        k=data.k,
        seed=data.seed,
        group=data.group,
        val_fraction=data.val_fraction,
        val_seed=data.val_seed,
    )
    return samples, manifest


def load_fold_metrics(out_dir: Path, index: int) -> dict[str, Any] | None:
    """The ``metrics.json`` of fold ``index`` when the fold is finished, else None."""
    path = fold_dir(out_dir, index) / FOLD_METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
