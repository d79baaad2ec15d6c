"""Cross-validation: per fold a fresh model trained, selected, post-processing tuned, test scored.

For every fold of the manifest (``folds.json``):

1. seed, build a **fresh** model and (inside :func:`~nucleisam.train.loop.fit`) a fresh optimiser;
2. train on the fold's training images; after each epoch post-process the inner validation images
   with the default parameters and score their mean AJI; keep the best epoch;
3. reload the best epoch and tune the post-processing parameters on the validation images;
4. score the test images at native resolution with the tuned watershed, with connected components
   of the thresholded foreground (to show what post-processing adds) and with the classical baseline
   (no model; :func:`nucleisam.classical.tune_classical` on the same validation images), each with and
   without the vague areas;
5. write ``fold_<i>/adapter.safetensors`` (tuned post-processing in its metadata), ``history.csv``,
   ``per_image.csv`` and ``metrics.json``; ``metrics.json`` marks the fold finished, so ``--resume``
   never redoes it.

The run folder then gets ``summary.json``, ``report.md``, ``curves.png`` and ``overlays/``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.measure import label as connected_components

from nucleisam.classical import classical_instances, tune_classical
from nucleisam.config import save_config, to_dict
from nucleisam.data import Augmenter, FoldManifest, Sample
from nucleisam.errors import NucleisamError
from nucleisam.experiments.report import REPORT_METRICS, plot_curves, write_overlay, write_report
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
from nucleisam.model import build_model, save_adapter
from nucleisam.model.inference import predict_maps, resolve_device
from nucleisam.postprocess import PostprocessConfig, labels_from_maps, tune_postprocess
from nucleisam.train.config import Config, load_run_config
from nucleisam.train.dataset import SampleCache, TileData, TrainingDataset
from nucleisam.train.distributed import DistContext
from nucleisam.train.loop import CHECKPOINT_DIR, HISTORY_FILE, fit
from nucleisam.train.state import load_weights_into, seed_everything
from nucleisam.utils.atomic import ensure_output_dir, write_json_atomic
from nucleisam.utils.tables import read_rows_csv, write_rows_csv

ADAPTER_FILE = "adapter.safetensors"


def foreground_components(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Connected components (8-connectivity) of ``probability > threshold`` as int32 labels."""
    return connected_components(probability > threshold, connectivity=2).astype(np.int32)


def _parameter_counts(model: torch.nn.Module) -> dict[str, int | float]:
    """Total and trainable counts, the trainable share, and each part's size (report table)."""
    rows = {row["part"]: row for row in model.parameter_table()}
    total = rows.pop("total")
    counts: dict[str, int | float] = {
        "total": total["parameters"],
        "trainable": total["trainable"],
        "trainable_percent": total["trainable_percent"],
    }
    counts.update(
        {f"{part} (trainable {row['trainable']:,})": row["parameters"] for part, row in rows.items()}
    )
    return counts


def _score_maps(
    tiles: Sequence[TileData], maps: Sequence[Mapping[str, np.ndarray]], postprocess: PostprocessConfig
) -> dict[str, float]:
    accumulator = MetricAccumulator()
    for data, tile_maps in zip(tiles, maps, strict=True):
        accumulator.update(data.labels, labels_from_maps(dict(tile_maps), postprocess), data.ambiguous)
    return {name: accumulator.compute().mean[name] for name in REPORT_METRICS}


@dataclass
class FoldSplit:
    """The samples of one training job; ``test`` is empty for a final model trained on everything."""

    index: int
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]


def run_fold(
    config: Config,
    split: FoldSplit,
    directory: Path,
    *,
    cache: SampleCache,
    resume: bool,
    context: DistContext,
    overlay_dir: Path | None = None,
    overlays: int = 2,
    log: Log = print,
) -> dict[str, Any]:
    """Train, select, tune and (when ``split.test``) evaluate one fold; returns its metrics dict."""
    started = time.perf_counter()
    label = f"fold {split.index}"
    if not split.val:
        raise NucleisamError(
            f"{label} has no validation images (too few training images for data.val_fraction="
            f"{config.data.val_fraction}); use more images or a larger data.val_fraction."
        )
    # A fresh, identically seeded model per fold: nothing learnt in one fold reaches the next.
    seed_everything(config.train.seed)
    model = build_model(config.model)
    parameters = _parameter_counts(model)
    augment = Augmenter() if config.train.augment else None
    train_set = TrainingDataset(
        split.train, cache, augment=augment, seed=config.train.seed + 1000 * split.index
    )
    cache.prefill(split.train + split.val)
    val_tiles = [cache.get(s) for s in split.val]
    device = context.device
    batch = config.train.eval_batch_size
    precision = "auto" if config.train.amp else "fp32"

    def validate(current: torch.nn.Module) -> dict[str, float]:
        maps = predict_maps(
            current, [t.image for t in val_tiles], device=device, batch_size=batch, precision=precision
        )
        return _score_maps(val_tiles, maps, config.postprocess)

    result = fit(
        model,
        train_set,
        config.train,
        out_dir=directory,
        validate=validate,
        resume=resume,
        context=context,
        label=label,
        log=log,
    )
    if not context.is_main:
        return {}
    assert result.best_weights is not None
    load_weights_into(model, result.best_weights)
    model.to(device)

    val_maps = predict_maps(
            model, [t.image for t in val_tiles], device=device, batch_size=batch, precision=precision
        )
    tuning = tune_postprocess(
        [(maps, t.labels, t.ambiguous) for maps, t in zip(val_maps, val_tiles, strict=True)],
        config=config.postprocess,
        metric=config.train.select_metric,
    )
    tuned = tuning.config
    tuned_val = _score_maps(val_tiles, val_maps, tuned)
    log(
        f"{label}: post-processing tuned on {len(val_tiles)} validation images: mean AJI "
        f"{result.best_score:.4f} → {tuned_val['aji']:.4f}"
    )

    fold_metrics: dict[str, Any] = {
        "fold": split.index,
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "best_epoch": result.best_epoch,
        "best_val": result.best_score,
        "val_tuned": tuned_val,
        "postprocess": to_dict(tuned),
        "parameters": parameters,
    }
    if split.test:
        scores = MethodScores()
        # The classical baseline (no model), tuned on the same validation images with the same search.
        classical = tune_classical(
            [(t.image, t.labels, t.ambiguous) for t in val_tiles], metric=config.train.select_metric
        )
        log(
            f"{label}: classical baseline tuned on the validation images: mean {classical.metric} "
            f"{classical.start_score:.4f} → {classical.score:.4f}"
        )
        threshold = float(tuned.foreground_threshold)
        overlay_budget = overlays if overlay_dir is not None else 0
        for start in range(0, len(split.test), batch):
            chunk = split.test[start : start + batch]
            tiles = [cache.get(s) for s in chunk]
            maps = predict_maps(
                model, [t.image for t in tiles], device=device, batch_size=batch, precision=precision
            )
            for sample, data, tile_maps in zip(chunk, tiles, maps, strict=True):
                watershed = labels_from_maps(tile_maps, tuned)
                components = foreground_components(tile_maps["foreground"], threshold)
                baseline = classical_instances(data.image, classical.config)
                for method, prediction in (
                    ("watershed", watershed),
                    ("connected_components", components),
                    ("classical", baseline),
                ):
                    scores.update(method, sample, data.labels, prediction, data.ambiguous)
                if overlay_budget > 0 and overlay_dir is not None:
                    write_overlay(
                        overlay_dir / f"fold{split.index}_{sample.stem}.png",
                        data.image,
                        data.labels,
                        watershed,
                    )
                    overlay_budget -= 1
        write_rows_csv(directory / PER_IMAGE_FILE, scores.rows)
        fold_metrics["test"] = scores.compute()
        fold_metrics["classical_params"] = to_dict(classical.config)

    adapter_meta = {
        "postprocess": to_dict(tuned),
        "training": {
            "fold": split.index,
            "best_epoch": result.best_epoch,
            "select_metric": config.train.select_metric,
            "best_val": result.best_score,
        },
    }
    save_adapter(model, directory / ADAPTER_FILE, extra_metadata=adapter_meta)
    fold_metrics["seconds"] = time.perf_counter() - started
    # metrics.json is the "fold finished" mark; the checkpoint is no longer needed after it.
    write_json_atomic(directory / FOLD_METRICS_FILE, fold_metrics)
    shutil.rmtree(directory / CHECKPOINT_DIR, ignore_errors=True)
    return fold_metrics


# -- the run folder ---------------------------------------------------------------------------------

#: Options that change how a run executes, not what it computes: they may differ on --resume.
RUNTIME_KEYS = {"train.num_workers", "train.progress", "train.device", "data.cache", "data.cache_dir"}


@dataclass
class RunSetup:
    """What every command of this module needs before training: the folder, config, data and folds."""

    out: Path
    config: Config
    samples: list[Sample]
    manifest: FoldManifest | None


def prepare_run(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool,
    context: DistContext,
    with_folds: bool = True,
    log: Log = print,
) -> RunSetup:
    """Check the run folder, open the data, make or reload the folds, then create the folder and save
    ``config.yaml`` and ``folds.json`` (nothing is written when the data or options are wrong)."""
    out = Path(out_dir)
    check_run_folder(out, config, resume=resume, load_saved=load_run_config, runtime_keys=RUNTIME_KEYS)
    folds_path = out / FOLDS_FILE
    samples, manifest = open_run_data(config.data, folds_path if with_folds else None, log=log)
    context.barrier()  # every process has checked the folder before rank 0 writes into it
    ensure_output_dir(out)
    if context.is_main and manifest is not None and not folds_path.exists():
        manifest.save(folds_path)
    if context.is_main:
        save_config(config, out / CONFIG_FILE)
    return RunSetup(out, config, samples, manifest)


def make_cache(config: Config, out: Path) -> SampleCache:
    directory = Path(config.data.cache_dir) if config.data.cache_dir else out / "cache"
    return SampleCache(config.data.cache, directory if config.data.cache == "disk" else None)


def run_cv(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    only_folds: Sequence[int] | None = None,
    command: str = "",
    notes: Sequence[str] = (),
    context: DistContext | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Cross-validate ``config`` into ``out_dir``; returns the summary (also ``summary.json``)."""
    for index in only_folds or ():
        if not 0 <= index < config.data.k:
            raise NucleisamError(f"--fold {index} does not exist: folds are 0–{config.data.k - 1} (data.k).")
    context = context or DistContext(device=_device(config))
    setup = prepare_run(config, out_dir, resume=resume, context=context, log=log)
    assert setup.manifest is not None
    out = setup.out
    cache = make_cache(config, out)
    wanted = list(range(len(setup.manifest.folds))) if only_folds is None else list(only_folds)
    overlay_dir = out / OVERLAY_DIR
    results: list[dict[str, Any]] = []
    for index, fold in enumerate(setup.manifest.folds):
        directory = fold_dir(out, index)
        finished = load_fold_metrics(out, index)
        if finished is not None:
            if index in wanted:
                log(f"fold {index}: finished earlier, not redone ({directory / FOLD_METRICS_FILE})")
            results.append(finished)
            continue
        if index not in wanted:
            continue
        split = FoldSplit(
            index,
            fold.select(setup.samples, "train"),
            fold.select(setup.samples, "val"),
            fold.select(setup.samples, "test"),
        )
        log(
            f"fold {index}: {len(split.train)} training, {len(split.val)} validation, "
            f"{len(split.test)} test images"
        )
        metrics = run_fold(
            config,
            split,
            directory,
            cache=cache,
            resume=resume,
            context=context,
            overlay_dir=overlay_dir,
            log=log,
        )
        if context.is_main:
            results.append(metrics)
        context.barrier()
    if not context.is_main:
        return {}
    results.sort(key=lambda r: r["fold"])
    summary = summarize(
        results,
        read_per_image(out, results),
        k=config.data.k,
        select_metric=config.train.select_metric,
        command=command,
        n_images=len(setup.samples),
        notes=notes,
    )
    write_json_atomic(out / SUMMARY_FILE, summary)
    histories = {r["fold"]: read_rows_csv(fold_dir(out, r["fold"]) / HISTORY_FILE) for r in results}
    figures = [plot_curves(histories, out / "curves.png", metric=config.train.select_metric).name]
    figures += sorted(f"{OVERLAY_DIR}/{p.name}" for p in overlay_dir.glob("*.png"))
    write_report(summary, out, figures=figures)
    return summary


def _device(config: Config) -> torch.device:
    return resolve_device(config.train.device)


def train_final(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    context: DistContext | None = None,
    log: Log = print,
) -> Path:
    """Train one model on all images (validation split held out for selection and tuning)."""
    from nucleisam.data.folds import stratified_validation

    context = context or DistContext(device=_device(config))
    setup = prepare_run(config, out_dir, resume=resume, context=context, with_folds=False, log=log)
    samples = sorted(setup.samples, key=lambda s: s.stem)
    rng = np.random.default_rng([config.data.val_seed, 0])
    val_idx = set(
        stratified_validation(
            range(len(samples)), [s.group for s in samples], fraction=config.data.val_fraction, rng=rng
        )
    )
    split = FoldSplit(
        0,
        [s for i, s in enumerate(samples) if i not in val_idx],
        [s for i, s in enumerate(samples) if i in val_idx],
        [],
    )
    directory = setup.out / "final"
    finished = directory / FOLD_METRICS_FILE
    if not finished.is_file():
        run_fold(
            config,
            split,
            directory,
            cache=make_cache(config, setup.out),
            resume=resume,
            context=context,
            log=log,
        )
    return directory / ADAPTER_FILE
