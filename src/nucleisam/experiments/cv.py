"""Cross-validation of any :class:`~nucleisam.experiments.method.Method`: one runner for the
fine-tuned model (``nucleisam cv``, ``train``, ``demo``) and the classical baseline (``nucleisam
baseline``).

For every fold of the manifest (``folds.json``) the runner:

1. skips the fold when its ``metrics.json`` exists (a resumed run never redoes a finished fold);
2. fits the method on the fold's training images (selecting on its validation images) and tunes its
   parameters on the validation images;
3. scores the test images at native resolution, each report row of the method with and without the
   vague areas, into ``per_image.csv``, with contour overlays of the first test tiles;
4. lets the method save its artefacts, then writes ``metrics.json`` last: it marks the fold finished.

The run folder then gets ``summary.json``, ``report.md`` and, for a method with a training history,
``curves.png``. Nothing is written before the folder, the options and the data have been checked.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucleisam.config import save_config
from nucleisam.data.datasets import Sample
from nucleisam.data.folds import FoldManifest, stratified_validation
from nucleisam.data.resolution import DataResolution
from nucleisam.errors import NucleisamError
from nucleisam.experiments.method import FoldSplit, Method, load_tile
from nucleisam.experiments.report import plot_curves, write_overlay, write_report
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
    resolve_run_mpp,
    summarize_folds,
)
from nucleisam.utils.atomic import ensure_output_dir, write_json_atomic
from nucleisam.utils.tables import read_rows_csv, write_rows_csv

#: Folder of a model trained on all images (``nucleisam train --all``).
FINAL_DIR = "final"


def _no_validation(label: str, val_fraction: float) -> NucleisamError:
    return NucleisamError(
        f"{label} has no validation images to select and tune on (too few training images for "
        f"data.val_fraction={val_fraction}); use more images or a larger data.val_fraction."
    )


def _score_test(
    method: Method, split: FoldSplit, overlay_dir: Path | None, overlays: int
) -> MethodScores:
    """Every report row of ``method`` on the test images, with and without the vague areas; the
    first ``overlays`` test tiles get a contour overlay of the primary row in ``overlay_dir``."""
    scores = MethodScores()
    budget = overlays if overlay_dir is not None else 0
    for start in range(0, len(split.test), method.batch_size):
        chunk = split.test[start : start + method.batch_size]
        tiles = [load_tile(sample) for sample in chunk]
        predictions = method.segment_all([tile.image for tile in tiles])
        for sample, tile, rows in zip(chunk, tiles, predictions, strict=True):
            for name, prediction in rows.items():
                scores.update(name, sample, tile.labels, prediction, tile.vague)
            if budget > 0 and overlay_dir is not None:
                path = overlay_dir / f"fold{split.index}_{sample.stem}.png"
                write_overlay(path, tile.image, tile.labels, rows[method.primary])
                budget -= 1
    return scores


def run_fold(
    method: Method,
    split: FoldSplit,
    directory: Path,
    *,
    resume: bool = False,
    overlay_dir: Path | None = None,
    overlays: int = 2,
    log: Log = print,
) -> dict[str, Any] | None:
    """Fit, tune and (when ``split.test``) score one fold into ``directory``; returns its
    ``metrics.json`` dict (None in a process other than the main one)."""
    started = time.perf_counter()
    label = f"fold {split.index}"
    if not split.val:
        raise _no_validation(label, method.config.data.val_fraction)
    fitted = method.fit(split, directory, resume=resume, log=log)
    if not method.processes.is_main:
        return None
    record: dict[str, Any] = {
        "fold": split.index,
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        **fitted.record,
    }
    record.update(method.tune(split.val, log=lambda line: log(f"{label}: {line}")))
    if split.test:
        scores = _score_test(method, split, overlay_dir, overlays)
        write_rows_csv(directory / PER_IMAGE_FILE, scores.rows)
        record["test"] = scores.compute()
        aji = record["test"][method.primary]["vague_excluded"]["mean"]["aji"]
        log(f"{label}: {len(split.test)} test images scored, mean AJI {aji:.4f} (vague areas excluded)")
    method.save(directory)
    record["seconds"] = time.perf_counter() - started
    # metrics.json marks the fold finished; the method's working state is no longer needed after it.
    write_json_atomic(directory / FOLD_METRICS_FILE, record)
    if fitted.scratch is not None:
        shutil.rmtree(fitted.scratch, ignore_errors=True)
    return record


# -- the run folder ---------------------------------------------------------------------------------


@dataclass
class RunSetup:
    """What a run needs before its first fold: the folder, the configuration saved there, the data,
    the folds (None for a final model) and the images' resolution (``config.data.mpp``, and whence)."""

    out: Path
    config: Any
    samples: list[Sample]
    manifest: FoldManifest | None
    resolution: DataResolution


def with_manifest_folds(config: Any, manifest: FoldManifest) -> Any:
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


def prepare_run(
    method: Method,
    out_dir: str | os.PathLike[str],
    *,
    folds: str | os.PathLike[str] | None = None,
    resume: bool = False,
    with_folds: bool = True,
    log: Log = print,
) -> RunSetup:
    """Check the run folder, open the data, make, load (``folds``) or reload the folds, then create the
    folder and save ``config.yaml`` and ``folds.json``; nothing is written when anything is wrong.

    ``folds`` is an existing manifest (e.g. another run's ``folds.json``) whose fold parameters
    replace those of the method's configuration; a resumed run keeps its own ``folds.json``. The
    images' resolution is settled first (``data.mpp``, else what the images record, else NuInsSeg's)
    and recorded in ``config.yaml``; ``method.config`` becomes the configuration saved, so what the
    method records (a model's ``train_mpp``) is what the run folder says.
    """
    out, config = Path(out_dir), method.config
    given = FoldManifest.load(folds) if folds is not None else None
    if given is not None:
        config = with_manifest_folds(config, given)
    resolution = resolve_run_mpp(config.data, log=log)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, mpp=resolution.mpp))
    check_run_folder(out, config, resume=resume)
    saved = out / FOLDS_FILE
    source = Path(folds) if folds is not None and not saved.exists() else saved
    samples, manifest = open_run_data(config.data, source if with_folds else None, log=log)
    if given is not None and manifest is not None and manifest.to_dict() != given.to_dict():
        raise NucleisamError(
            f"fold manifest {folds} (folds) differs from the folds of the run in {out} ({saved}); "
            "resume without it, or start a new run in another output folder (out)."
        )
    unvalidated = [fold.index for fold in manifest.folds if not fold.val] if manifest is not None else []
    if unvalidated:
        raise _no_validation(f"fold {unvalidated[0]}", config.data.val_fraction)
    method.check()
    method.config = config
    method.processes.barrier()  # every process has checked the folder before the main one writes
    ensure_output_dir(out)
    if method.processes.is_main:
        if manifest is not None and not saved.exists():
            manifest.save(saved)
        save_config(config, out / CONFIG_FILE)
    return RunSetup(out, config, samples, manifest, resolution)


def _check_folds_exist(only_folds: Sequence[int] | None, k: int) -> None:
    for index in only_folds or ():
        if not 0 <= index < k:
            raise NucleisamError(f"fold {index} does not exist (only_folds): folds are 0–{k - 1} (data.k).")


def _run_folds(
    method: Method,
    setup: RunSetup,
    *,
    only_folds: Sequence[int] | None,
    resume: bool,
    overlays: int,
    log: Log,
) -> list[dict[str, Any]]:
    """Run the wanted unfinished folds; returns the ``metrics.json`` dicts of every finished fold."""
    assert setup.manifest is not None
    folds = setup.manifest.folds
    wanted = range(len(folds)) if only_folds is None else only_folds
    results: list[dict[str, Any]] = []
    for index, fold in enumerate(folds):
        directory = fold_dir(setup.out, index)
        finished = load_fold_metrics(setup.out, index)
        if finished is not None:
            if index in wanted:
                log(f"fold {index}: finished earlier, not redone ({directory / FOLD_METRICS_FILE})")
            results.append(finished)
            continue
        if index not in wanted:
            continue
        split = FoldSplit(
            index, *(fold.select(setup.samples, part) for part in ("train", "val", "test"))
        )
        log(
            f"fold {index}: {len(split.train)} training, {len(split.val)} validation, "
            f"{len(split.test)} test images"
        )
        metrics = run_fold(
            method,
            split,
            directory,
            resume=resume,
            overlay_dir=setup.out / OVERLAY_DIR,
            overlays=overlays,
            log=log,
        )
        if metrics is not None:
            results.append(metrics)
        method.processes.barrier()
    return sorted(results, key=lambda r: r["fold"])


def _write_summary(
    method: Method, setup: RunSetup, results: list[dict[str, Any]], *, command: str, notes: Sequence[str]
) -> dict[str, Any]:
    """``summary.json`` and ``report.md`` (with ``curves.png`` and the overlays) of the finished folds."""
    assert setup.manifest is not None
    out = setup.out
    summary = summarize_folds(
        results,
        read_per_image(out, results),
        k=setup.manifest.k,
        select_metric=method.select_metric,
        command=command,
        n_images=len(setup.samples),
        primary_method=method.primary,
        notes=notes,
        resolution=setup.resolution,
    )
    write_json_atomic(out / SUMMARY_FILE, summary)
    figures: list[str] = []
    if method.history_file is not None:
        histories = {
            r["fold"]: read_rows_csv(fold_dir(out, r["fold"]) / method.history_file) for r in results
        }
        figures.append(plot_curves(histories, out / "curves.png", metric=method.select_metric).name)
    figures += sorted(f"{OVERLAY_DIR}/{path.name}" for path in (out / OVERLAY_DIR).glob("*.png"))
    write_report(summary, out, figures=figures)
    return summary


def run_cv(
    method: Method,
    out_dir: str | os.PathLike[str],
    *,
    folds: str | os.PathLike[str] | None = None,
    resume: bool = False,
    only_folds: Sequence[int] | None = None,
    command: str = "",
    notes: Sequence[str] = (),
    overlays: int = 2,
    log: Log = print,
) -> dict[str, Any]:
    """Cross-validate ``method`` into ``out_dir``; returns the summary (also ``summary.json``; an
    empty dict in a process other than the main one).

    ``folds`` reuses a fold manifest (see :func:`prepare_run`); ``only_folds`` runs just those folds
    (the summary covers every finished one); ``notes`` are printed at the top of the report.
    """
    _check_folds_exist(only_folds, method.config.data.k)
    setup = prepare_run(method, out_dir, folds=folds, resume=resume, log=log)
    results = _run_folds(method, setup, only_folds=only_folds, resume=resume, overlays=overlays, log=log)
    if not method.processes.is_main:
        return {}
    return _write_summary(method, setup, results, command=command, notes=notes)


def train_final(
    method: Method, out_dir: str | os.PathLike[str], *, resume: bool = False, log: Log = print
) -> Path:
    """Fit and tune ``method`` on all images, a validation split (stratified by organ) held out for
    selection and tuning; returns the folder of its artefacts (``final/``)."""
    setup = prepare_run(method, out_dir, resume=resume, with_folds=False, log=log)
    data = setup.config.data
    samples = sorted(setup.samples, key=lambda s: s.stem)
    val_idx = set(
        stratified_validation(
            range(len(samples)),
            [s.group for s in samples],
            fraction=data.val_fraction,
            rng=np.random.default_rng([data.val_seed, 0]),
        )
    )
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    split = FoldSplit(0, train, [s for i, s in enumerate(samples) if i in val_idx], [])
    directory = setup.out / FINAL_DIR
    if not (directory / FOLD_METRICS_FILE).is_file():
        run_fold(method, split, directory, resume=resume, log=log)
    return directory
