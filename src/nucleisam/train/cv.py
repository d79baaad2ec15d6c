"""Cross-validation: per fold a fresh model trained, selected, post-processing tuned, test scored.

For every fold of the manifest (``folds.json``):

1. seed, build a **fresh** model and (inside :func:`~nucleisam.train.loop.fit`) a fresh optimiser;
2. train on the fold's training images; after each epoch post-process the inner validation images
   with the default parameters and score their mean AJI; keep the best epoch;
3. reload the best epoch and tune the post-processing parameters on the validation images;
4. score the test images at native resolution with the tuned watershed, with connected components
   of the thresholded foreground (to show what post-processing adds) and, when available, with the
   classical baseline (no model), each with and without the vague areas;
5. write ``fold_<i>/adapter.safetensors`` (tuned post-processing in its metadata), ``history.csv``,
   ``per_image.csv`` and ``metrics.json``; ``metrics.json`` marks the fold finished, so ``--resume``
   never redoes it.

The run folder then gets ``summary.json``, ``report.md``, ``curves.png`` and ``overlays/``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.measure import label as connected_components

from nucleisam import __version__
from nucleisam.config import save_config, to_dict
from nucleisam.data import Augmenter, FoldManifest, Sample, make_folds, open_dataset
from nucleisam.errors import NucleisamError
from nucleisam.io.atomic import ensure_output_dir, write_json_atomic
from nucleisam.io.report import REPORT_METRICS, mean_std, plot_curves, write_overlay, write_report
from nucleisam.io.tables import read_rows_csv, write_rows_csv
from nucleisam.metrics import MetricAccumulator
from nucleisam.model import build_model, save_adapter
from nucleisam.postprocess import PostprocessConfig, labels_from_maps, tune_postprocess
from nucleisam.train.config import Config, load_run_config
from nucleisam.train.dataset import SampleCache, TileData, TrainingDataset
from nucleisam.train.distributed import DistContext
from nucleisam.train.inference import predict_maps
from nucleisam.train.loop import CHECKPOINT_DIR, HISTORY_FILE, fit
from nucleisam.train.state import load_weights_into, seed_everything

CONFIG_FILE = "config.yaml"
FOLDS_FILE = "folds.json"
SUMMARY_FILE = "summary.json"
FOLD_METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.csv"
ADAPTER_FILE = "adapter.safetensors"

#: Ways test images are turned into instances, in report order, with their labels.
METHOD_LABELS = {
    "watershed": "model + tuned watershed",
    "connected_components": "model + connected components",
    "classical": "classical baseline (no model)",
}
VARIANTS = ("vague_excluded", "all_pixels")
#: Columns of per_image.csv that hold names; every other column (and all of history.csv) is numeric.
TEXT_COLUMNS = {"stem", "organ", "method", "variant"}
AGGREGATION = (
    "per-image mean over each fold's test images; mean ± sample std (ddof=1) over folds. "
    "Per-organ values: per-image mean over all test images of the organ. Pooled and nuclei-weighted "
    "values per fold are in each fold's metrics.json."
)

Log = Callable[[str], None]


def fold_dir(out_dir: Path, index: int) -> Path:
    return out_dir / f"fold_{index}"


def foreground_components(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Connected components (8-connectivity) of ``probability > threshold`` as int32 labels."""
    return connected_components(probability > threshold, connectivity=2).astype(np.int32)


class _Scores:
    """Per-image metrics for each (method, variant), kept as rows and accumulators."""

    def __init__(self) -> None:
        self.accumulators: dict[tuple[str, str], MetricAccumulator] = {}
        self.rows: list[dict[str, Any]] = []

    def add(self, method: str, sample: Sample, data: TileData, prediction: np.ndarray) -> None:
        for variant in VARIANTS:
            ambiguous = data.ambiguous if variant == "vague_excluded" else None
            accumulator = self.accumulators.setdefault((method, variant), MetricAccumulator())
            metrics = accumulator.update(data.labels, prediction, ambiguous, key=sample.stem)
            self.rows.append(
                {"stem": sample.stem, "organ": sample.group, "method": method, "variant": variant, **metrics}
            )

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
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


#: Values tried when tuning the classical baseline on a fold's validation images.
CLASSICAL_SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "sigma": (0.5, 1.0, 2.0),
    "otsu_scale": (0.8, 0.9, 1.0, 1.1, 1.25),
    "peak_height": (0.5, 1.0, 2.0, 3.0),
    "min_area": (10, 30, 60),
}


@dataclass(frozen=True)
class _Classical:
    """The classical baseline (hematoxylin threshold + watershed, no model) with tuned parameters."""

    config: Any

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from nucleisam.baseline import classical_instances

        return classical_instances(image, self.config)


def _classical_method(val_tiles: Sequence[TileData], metric: str, log: Log, label: str) -> _Classical | None:
    """The classical baseline tuned on the validation tiles like the model's post-processing, or None
    when this installation has no baseline module."""
    try:
        from nucleisam.baseline import ClassicalConfig, classical_instances
    except ImportError:
        return None
    tuning = tune_postprocess(
        [(t.image, t.labels, t.ambiguous) for t in val_tiles],
        config=ClassicalConfig(),
        segment=classical_instances,
        search_space=CLASSICAL_SEARCH_SPACE,
        metric=metric,
    )
    log(f"{label}: classical baseline tuned on the validation images: mean {metric} {tuning.score:.4f}")
    return _Classical(tuning.config)


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
    amp = config.train.amp

    def validate(current: torch.nn.Module) -> dict[str, float]:
        maps = predict_maps(current, [t.image for t in val_tiles], device=device, batch_size=batch, amp=amp)
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

    val_maps = predict_maps(model, [t.image for t in val_tiles], device=device, batch_size=batch, amp=amp)
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
        scores = _Scores()
        classical = _classical_method(val_tiles, config.train.select_metric, log, label)
        threshold = float(tuned.foreground_threshold)
        overlay_budget = overlays if overlay_dir is not None else 0
        for start in range(0, len(split.test), batch):
            chunk = split.test[start : start + batch]
            tiles = [cache.get(s) for s in chunk]
            maps = predict_maps(model, [t.image for t in tiles], device=device, batch_size=batch, amp=amp)
            for sample, data, tile_maps in zip(chunk, tiles, maps, strict=True):
                watershed = labels_from_maps(tile_maps, tuned)
                scores.add("watershed", sample, data, watershed)
                scores.add(
                    "connected_components",
                    sample,
                    data,
                    foreground_components(tile_maps["foreground"], threshold),
                )
                if classical is not None:
                    scores.add("classical", sample, data, classical(data.image))
                if overlay_budget > 0 and overlay_dir is not None:
                    write_overlay(
                        overlay_dir / f"fold{split.index}_{sample.stem}.png",
                        data.image,
                        data.labels,
                        watershed,
                    )
                    overlay_budget -= 1
        write_rows_csv(directory / PER_IMAGE_FILE, scores.rows)
        fold_metrics["test"] = scores.summary()
        if classical is not None:
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


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _check_resumable(saved: Config, current: Config, path: Path) -> None:
    old, new = _flatten(to_dict(saved)), _flatten(to_dict(current))
    changed = sorted(k for k in old.keys() | new.keys() if k not in RUNTIME_KEYS and old.get(k) != new.get(k))
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in changed[:6])
        raise NucleisamError(
            f"--resume: the configuration differs from the run's {path} ({details}). Resume with the same "
            "options (e.g. --config of that file), or start a new run in another --out folder."
        )


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
    config_path = out / CONFIG_FILE
    if config_path.exists():
        if not resume:
            raise NucleisamError(
                f"{out} already holds a run ({CONFIG_FILE}); continue it with --resume or choose another "
                "--out."
            )
        _check_resumable(load_run_config(config_path), config, config_path)
    data = config.data
    if data.root is None and data.images is None:
        raise NucleisamError(
            "no training data: pass --data ROOT (or set data.root / data.images in the config)."
        )
    dataset = open_dataset(
        data.root, images=data.images, masks=data.masks, binary_masks=data.binary_masks, strict=data.strict
    )
    for problem in dataset.problems:
        log(f"warning: {problem}")
    samples = list(dataset.samples)
    folds_path = out / FOLDS_FILE
    manifest = None
    if with_folds and folds_path.exists():
        manifest = FoldManifest.load(folds_path, samples=samples)
    elif with_folds:
        manifest = make_folds(
            samples,
            k=data.k,
            seed=data.seed,
            group=data.group,
            val_fraction=data.val_fraction,
            val_seed=data.val_seed,
        )
    context.barrier()  # every process has checked the folder before rank 0 writes into it
    ensure_output_dir(out)
    if context.is_main and manifest is not None and not folds_path.exists():
        manifest.save(folds_path)
    if context.is_main:
        save_config(config, config_path)
    return RunSetup(out, config, samples, manifest)


def make_cache(config: Config, out: Path) -> SampleCache:
    directory = Path(config.data.cache_dir) if config.data.cache_dir else out / "cache"
    return SampleCache(config.data.cache, directory if config.data.cache == "disk" else None)


def summarize(
    config: Config,
    folds: Sequence[Mapping[str, Any]],
    per_image: Sequence[Mapping[str, Any]],
    *,
    command: str,
    n_images: int,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``summary.json`` dict (layout in :mod:`nucleisam.io.report`)."""
    methods: dict[str, Any] = {}
    for method, method_label in METHOD_LABELS.items():
        if not all(method in fold.get("test", {}) for fold in folds):
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
        if row["method"] == "watershed" and row["variant"] == "vague_excluded":
            per_organ.setdefault(str(row["organ"]), {"rows": []})["rows"].append(row)
    for entry in per_organ.values():
        rows = entry.pop("rows")
        entry["n_images"] = len(rows)
        entry.update({m: float(np.mean([r[m] for r in rows])) for m in REPORT_METRICS})
    return {
        "nucleisam_version": __version__,
        "command": command,
        "aggregation": AGGREGATION,
        "k": config.data.k,
        "folds_completed": len(folds),
        "n_images": n_images,
        "select_metric": config.train.select_metric,
        "methods": methods,
        "folds": [
            {
                key: fold.get(key)
                for key in ("fold", "n_train", "n_val", "n_test", "best_epoch", "best_val", "seconds")
            }
            for fold in folds
        ],
        "per_organ": per_organ,
        "parameters": folds[0]["parameters"] if folds else {},
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
    overlay_dir = out / "overlays"
    results: list[dict[str, Any]] = []
    for index, fold in enumerate(setup.manifest.folds):
        directory = fold_dir(out, index)
        finished = directory / FOLD_METRICS_FILE
        if finished.is_file():
            if index in wanted:
                log(f"fold {index}: finished earlier, not redone ({finished})")
            results.append(json.loads(finished.read_text(encoding="utf-8")))
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
    if not any("classical" in r.get("test", {}) for r in results):
        notes = [*notes, "Classical baseline: not computed (this installation has no nucleisam.baseline)."]
    results.sort(key=lambda r: r["fold"])
    per_image = [
        row
        for r in results
        for row in read_rows_csv(fold_dir(out, r["fold"]) / PER_IMAGE_FILE, text_columns=TEXT_COLUMNS)
    ]
    summary = summarize(config, results, per_image, command=command, n_images=len(setup.samples), notes=notes)
    write_json_atomic(out / SUMMARY_FILE, summary)
    histories = {r["fold"]: read_rows_csv(fold_dir(out, r["fold"]) / HISTORY_FILE) for r in results}
    figures = [plot_curves(histories, out / "curves.png", metric=config.train.select_metric).name]
    figures += sorted(f"overlays/{p.name}" for p in overlay_dir.glob("*.png"))
    write_report(summary, out, figures=figures)
    return summary


def _device(config: Config) -> torch.device:
    from nucleisam.train.distributed import resolve_device

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
