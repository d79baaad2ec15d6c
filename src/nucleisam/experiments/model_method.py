"""The fine-tuned MobileSAM as a cross-validated method (``nucleisam cv``, ``train``, ``demo``).

Per fold (:class:`ModelMethod`, run by :func:`nucleisam.experiments.cv.run_cv`):

1. seed, build a **fresh** model and (inside :func:`~nucleisam.train.loop.fit`) a fresh optimiser;
2. train on the fold's training images; after each epoch post-process the validation images with the
   default parameters and score their mean ``train.select_metric``; keep the best epoch;
3. reload the best epoch and tune the post-processing parameters on the validation images (and, for
   the comparison row, the classical baseline's parameters on the same images);
4. segment test images with the tuned watershed, with connected components of the thresholded
   foreground (to show what post-processing adds) and with the classical baseline (no model);
5. save ``adapter.safetensors`` (tuned post-processing and the images' resolution, ``data.mpp``, as
   ``train_mpp`` in its metadata) beside ``history.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.measure import label as connected_components

from nucleisam.classical import classical_instances, tune_classical
from nucleisam.config import ClassicalConfig, Config, PostprocessConfig, TrainConfig, to_dict
from nucleisam.data import Augmenter, Sample
from nucleisam.experiments.method import FitInfo, FoldSplit, mean_scores
from nucleisam.experiments.runs import Log
from nucleisam.model import build_model, save_adapter
from nucleisam.model.inference import predict_maps, resolve_device
from nucleisam.model.network import check_base_weights
from nucleisam.postprocess import instances_from_maps, tune_postprocess
from nucleisam.train.dataset import DecodedSample, SampleCache, TrainingDataset
from nucleisam.train.distributed import DistContext
from nucleisam.train.loop import CHECKPOINT_DIR, HISTORY_FILE, fit
from nucleisam.train.state import load_weights_into, seed_everything

ADAPTER_FILE = "adapter.safetensors"
Maps = dict[str, np.ndarray]


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


def _predict_maps(
    model: torch.nn.Module, images: Sequence[np.ndarray], config: TrainConfig, device: torch.device
) -> list[Maps]:
    """The model's maps of RGB uint8 images: the one call of the model-to-maps path in experiments."""
    precision = "auto" if config.amp else "fp32"
    return predict_maps(model, images, device=device, batch_size=config.eval_batch_size, precision=precision)


def _scores(
    tiles: Sequence[DecodedSample], maps: Sequence[Maps], postprocess: PostprocessConfig
) -> dict[str, float]:
    return mean_scores(
        (tile.labels, instances_from_maps(dict(tile_maps), postprocess), tile.vague)
        for tile, tile_maps in zip(tiles, maps, strict=True)
    )


def make_cache(config: Config, out: Path) -> SampleCache:
    """The decoded-tile cache of a run: in memory, or also on disk (``data.cache_dir`` or ``out/cache``)."""
    directory = Path(config.data.cache_dir) if config.data.cache_dir else out / "cache"
    return SampleCache(config.data.cache, directory if config.data.cache == "disk" else None)


class ModelMethod:
    """MobileSAM + LoRA trained per fold (:class:`~nucleisam.experiments.method.Method`).

    ``comparisons`` adds the report's comparison rows (connected components and the classical
    baseline, tuned on the same validation images); a final model without test images needs neither.
    """

    primary = "watershed"
    history_file = HISTORY_FILE

    def __init__(
        self, config: Config, out: Path, *, context: DistContext | None = None, comparisons: bool = True
    ) -> None:
        self.config = config
        self.select_metric: str = config.train.select_metric
        self.batch_size = config.train.eval_batch_size
        self.processes = context or DistContext(device=resolve_device(config.train.device))
        self.cache = make_cache(config, out)
        self.comparisons = comparisons
        self.model: torch.nn.Module | None = None
        self.postprocess = config.postprocess
        self.classical: ClassicalConfig | None = None
        self.training: dict[str, Any] = {}

    def check(self) -> None:
        """The base checkpoint is read and matched to MobileSAM before the run folder exists."""
        check_base_weights(self.config.model)

    def _maps(self, model: torch.nn.Module, images: Sequence[np.ndarray]) -> list[Maps]:
        return _predict_maps(model, images, self.config.train, self.processes.device)

    def fit(self, split: FoldSplit, directory: Path, *, resume: bool, log: Log) -> FitInfo:
        """Train a fresh, identically seeded model and keep its best validation epoch."""
        config = self.config
        self.model = None
        # A fresh, identically seeded model per fold: nothing learnt in one fold reaches the next.
        seed_everything(config.train.seed)
        model = build_model(config.model)
        parameters = _parameter_counts(model)
        augment = Augmenter() if config.train.augment else None
        train_set = TrainingDataset(
            split.train, self.cache, augment=augment, seed=config.train.seed + 1000 * split.index
        )
        self.cache.prefill(split.train + split.val)
        val_tiles = [self.cache.get(s) for s in split.val]

        def validate(current: torch.nn.Module) -> dict[str, float]:
            return _scores(val_tiles, self._maps(current, [t.image for t in val_tiles]), config.postprocess)

        result = fit(
            model,
            train_set,
            config.train,
            out_dir=directory,
            validate=validate,
            resume=resume,
            context=self.processes,
            label=f"fold {split.index}",
            log=log,
        )
        if not self.processes.is_main:
            return FitInfo()
        assert result.best_weights is not None
        load_weights_into(model, result.best_weights)
        self.model = model.to(self.processes.device)
        self.training = {
            "fold": split.index,
            "best_epoch": result.best_epoch,
            "select_metric": config.train.select_metric,
            "best_val": result.best_score,
        }
        record = {"best_epoch": result.best_epoch, "best_val": result.best_score, "parameters": parameters}
        return FitInfo(record, scratch=directory / CHECKPOINT_DIR)

    def tune(self, val: Sequence[Sample], *, log: Log) -> dict[str, Any]:
        """Post-processing (and, with ``comparisons``, the classical baseline) tuned on ``val``."""
        assert self.model is not None, "fit comes before tune"
        metric = self.select_metric
        tiles = [self.cache.get(s) for s in val]
        maps = self._maps(self.model, [t.image for t in tiles])
        tuning = tune_postprocess(
            [(m, t.labels, t.vague) for m, t in zip(maps, tiles, strict=True)],
            config=self.config.postprocess,
            metric=metric,
        )
        self.postprocess = tuning.config
        tuned = _scores(tiles, maps, self.postprocess)
        log(
            f"post-processing tuned on {len(tiles)} validation images: mean {metric} "
            f"{self.training['best_val']:.4f} → {tuned[metric]:.4f}"
        )
        record: dict[str, Any] = {"val_tuned": tuned, "postprocess": to_dict(self.postprocess)}
        if self.comparisons:
            classical = tune_classical([(t.image, t.labels, t.vague) for t in tiles], metric=metric)
            self.classical = classical.config
            log(
                f"classical baseline tuned on the validation images: mean {classical.metric} "
                f"{classical.start_score:.4f} → {classical.score:.4f}"
            )
            record["classical_params"] = to_dict(classical.config)
        return record

    def segment_all(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Tuned watershed and, with ``comparisons``, the comparison rows, per image."""
        assert self.model is not None, "fit comes before segment_all"
        threshold = float(self.postprocess.foreground_threshold)
        rows = []
        for image, maps in zip(images, self._maps(self.model, images), strict=True):
            row = {"watershed": instances_from_maps(maps, self.postprocess)}
            if self.comparisons:
                row["connected_components"] = foreground_components(maps["foreground"], threshold)
            if self.classical is not None:
                row["classical"] = classical_instances(image, self.classical)
            rows.append(row)
        return rows

    def save(self, directory: Path) -> None:
        """``adapter.safetensors``: the best epoch's weights, the tuned post-processing, how it was chosen."""
        assert self.model is not None, "fit comes before save"
        assert self.config.data.mpp is not None, "the run settles data.mpp before training"
        metadata = {"postprocess": to_dict(self.postprocess), "training": self.training}
        # The training resolution: predict reads slides at this scale (adapter_train_mpp).
        save_adapter(
            self.model, directory / ADAPTER_FILE, extra_metadata=metadata, train_mpp=self.config.data.mpp
        )
