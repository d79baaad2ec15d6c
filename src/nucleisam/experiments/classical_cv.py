"""``nucleisam baseline``: the classical baseline cross-validated like a model, without any model.

The run goes through the same fold manifest and writes the same folder as ``nucleisam cv``
(:mod:`nucleisam.experiments.runs`). Per fold, the parameters of
:func:`~nucleisam.classical.classical_instances` are tuned on the fold's validation images with
:func:`~nucleisam.classical.tune_classical` (the search ``cv`` uses for its classical row), then the
fold's test images are scored with and without the vague areas. The training images are not used:
the method learns nothing. Nothing on this path imports torch.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nucleisam.classical import ClassicalConfig, classical_instances, tune_classical
from nucleisam.config import load_config, save_config, to_dict
from nucleisam.data.config import DataConfig
from nucleisam.data.datasets import Sample
from nucleisam.data.folds import Fold, FoldManifest
from nucleisam.errors import NucleisamError
from nucleisam.experiments.report import REPORT_METRICS, write_overlay, write_report
from nucleisam.experiments.runs import (
    CONFIG_FILE,
    FOLD_METRICS_FILE,
    FOLDS_FILE,
    OVERLAY_DIR,
    PER_IMAGE_FILE,
    SUMMARY_FILE,
    Log,
    MethodScores,
    check_run_folder,
    fold_dir,
    load_fold_metrics,
    open_run_data,
    read_per_image,
    summarize,
)
from nucleisam.metrics import MetricAccumulator
from nucleisam.utils.atomic import ensure_output_dir, write_json_atomic
from nucleisam.utils.tables import write_rows_csv

METHOD = "classical"
#: Options that change how a run executes, not what it computes: they may differ on --resume.
RUNTIME_KEYS = {"data.cache", "data.cache_dir"}


@dataclass(frozen=True)
class BaselineConfig:
    """What a baseline run computes from: the data and its folds, the parameters each fold starts its
    search from, and the validation metric the search maximises. Saved as the run's ``config.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    classical: ClassicalConfig = field(default_factory=ClassicalConfig)
    select_metric: Literal["aji", "aji_plus", "pq", "dice"] = "aji"


def load_baseline_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    values: Mapping[str, Any] | None = None,
) -> BaselineConfig:
    """Defaults, then the YAML/TOML file ``path`` (e.g. a run's ``config.yaml``), then ``values``
    (dotted key → value from CLI options), then ``--set`` style ``overrides``."""
    return load_config(BaselineConfig, path, overrides, values)


def _load_tile(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    return sample.load_image(), sample.load_labels(), sample.load_ambiguous()


def _mean_scores(
    tiles: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]], config: ClassicalConfig
) -> dict[str, float]:
    """Per-image mean of every report metric of the baseline with ``config`` (vague areas excluded)."""
    accumulator = MetricAccumulator()
    for image, labels, vague in tiles:
        accumulator.update(labels, classical_instances(image, config), vague)
    mean = accumulator.compute().mean
    return {name: mean[name] for name in REPORT_METRICS}


def run_baseline_fold(
    config: BaselineConfig,
    fold: Fold,
    samples: Sequence[Sample],
    directory: Path,
    *,
    overlay_dir: Path | None = None,
    overlays: int = 2,
    log: Log = print,
) -> dict[str, Any]:
    """Tune on the fold's validation images, score its test images, write ``per_image.csv`` and (last)
    ``metrics.json`` into ``directory``; returns the metrics dict. ``overlays`` test tiles get a
    contour overlay in ``overlay_dir``."""
    started = time.perf_counter()
    label = f"fold {fold.index}"
    val, test = fold.select(samples, "val"), fold.select(samples, "test")
    if not val:
        raise NucleisamError(
            f"{label} has no validation images to tune the baseline on (too few training images for "
            f"data.val_fraction {config.data.val_fraction}); use more images or a larger data.val_fraction."
        )
    val_tiles = [_load_tile(sample) for sample in val]
    tuning = tune_classical(val_tiles, config=config.classical, metric=config.select_metric)
    log(
        f"{label}: parameters tuned on {len(val)} validation images: mean {tuning.metric} "
        f"{tuning.start_score:.4f} → {tuning.score:.4f}"
    )
    scores = MethodScores()
    for position, sample in enumerate(test):
        image, labels, vague = _load_tile(sample)
        prediction = classical_instances(image, tuning.config)
        scores.update(METHOD, sample, labels, prediction, vague)
        if overlay_dir is not None and position < overlays:
            write_overlay(overlay_dir / f"fold{fold.index}_{sample.stem}.png", image, labels, prediction)
    write_rows_csv(directory / PER_IMAGE_FILE, scores.rows)
    test_scores = scores.compute()
    metrics: dict[str, Any] = {
        "fold": fold.index,
        "n_train": len(fold.train),
        "n_val": len(val),
        "n_test": len(test),
        "select_metric": tuning.metric,
        "val_default": tuning.start_score,
        "val_tuned": _mean_scores(val_tiles, tuning.config),
        "classical_params": to_dict(tuning.config),
        "test": test_scores,
        "seconds": time.perf_counter() - started,
    }
    # metrics.json marks the fold finished (a resumed run skips it), so it is written last.
    write_json_atomic(directory / FOLD_METRICS_FILE, metrics)
    test_aji = test_scores[METHOD]["vague_excluded"]["mean"]["aji"]
    log(f"{label}: {len(test)} test images scored, mean AJI {test_aji:.4f} (vague areas excluded)")
    return metrics


def _with_manifest_folds(config: BaselineConfig, manifest: FoldManifest) -> BaselineConfig:
    """``config`` with the fold parameters of ``manifest``, so config.yaml describes the folds used."""
    data = dataclasses.replace(
        config.data,
        k=manifest.k,
        seed=manifest.seed,
        group=manifest.group,
        val_fraction=manifest.val_fraction,
        val_seed=manifest.val_seed,
    )
    return dataclasses.replace(config, data=data)


def run_baseline(
    config: BaselineConfig,
    out_dir: str | os.PathLike[str],
    *,
    folds: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overlays: int = 2,
    command: str = "",
    log: Log = print,
) -> dict[str, Any]:
    """Cross-validate the classical baseline into ``out_dir``; returns the summary (also
    ``summary.json``).

    The folds are ``folds`` (an existing manifest, e.g. a ``cv`` run's ``folds.json``; its fold
    parameters replace those of ``config.data``) or made from ``config.data``; a resumed run keeps
    its own ``folds.json``. The data, folds and folder are checked before anything is written.
    """
    out = Path(out_dir)
    given = None
    if folds is not None:
        given = FoldManifest.load(folds)
        config = _with_manifest_folds(config, given)
    check_run_folder(out, config, resume=resume, load_saved=load_baseline_config, runtime_keys=RUNTIME_KEYS)
    saved_folds = out / FOLDS_FILE
    source = Path(folds) if folds is not None and not saved_folds.exists() else saved_folds
    samples, manifest = open_run_data(config.data, source, log=log)
    assert manifest is not None
    if given is not None and manifest.to_dict() != given.to_dict():
        raise NucleisamError(
            f"fold manifest {folds} (folds) differs from the folds of the run in {out} ({saved_folds}); "
            "resume without it, or start a new run in another output folder (out)."
        )
    ensure_output_dir(out)
    if not saved_folds.exists():
        manifest.save(saved_folds)
    save_config(config, out / CONFIG_FILE)

    overlay_dir = out / OVERLAY_DIR
    results: list[dict[str, Any]] = []
    for fold in manifest.folds:
        directory = fold_dir(out, fold.index)
        finished = load_fold_metrics(out, fold.index)
        if finished is not None:
            log(f"fold {fold.index}: finished earlier, not redone ({directory / FOLD_METRICS_FILE})")
            results.append(finished)
            continue
        results.append(
            run_baseline_fold(
                config, fold, samples, directory, overlay_dir=overlay_dir, overlays=overlays, log=log
            )
        )
    summary = summarize(
        results,
        read_per_image(out, results),
        k=manifest.k,
        select_metric=config.select_metric,
        command=command,
        n_images=len(samples),
        primary_method=METHOD,
    )
    write_json_atomic(out / SUMMARY_FILE, summary)
    figures = sorted(f"{OVERLAY_DIR}/{path.name}" for path in overlay_dir.glob("*.png"))
    write_report(summary, out, figures=figures)
    return summary
