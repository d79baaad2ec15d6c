"""Training data: decoded tiles and their targets, cached, augmented, as torch tensors.

Decoding a PNG/TIFF and computing the distance targets of a tile costs far more than reading it
from memory, so :class:`SampleCache` keeps each tile's image, labels, vague mask and targets after
the first use (in memory, and optionally as ``.npz`` files reused by later runs); augmentation
transforms the cached maps with the image instead of recomputing them. The cache is filled in the
main process before the data-loader workers start, so forked workers share it.

Augmentation is reproducible without any global RNG: the sampler yields ``(epoch, index)`` keys and
the augmentation of a tile in an epoch draws from ``np.random.default_rng([seed, epoch, index])``,
whatever worker or process loads it, and across a resume.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from nucleisam.data.transforms import image_to_tensor
from nucleisam.utils.atomic import atomic_output

#: Target maps every tile provides (float32, H×W), as defined by ``nucleisam.data.instance_targets``.
TARGET_KEYS = ("foreground", "center_distance", "boundary_distance")

TargetsFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class SampleLike(Protocol):
    """What the training data needs of a ``nucleisam.data.Sample``."""

    stem: str
    image_path: Path
    labels_path: Path
    vague_path: Path | None

    def load_image(self) -> np.ndarray: ...
    def load_labels(self) -> np.ndarray: ...
    def load_vague(self) -> np.ndarray | None: ...


class Augmented(Protocol):
    image: np.ndarray
    labels: np.ndarray
    vague: np.ndarray | None
    maps: dict[str, np.ndarray]


class Augment(Protocol):
    """Joint augmentation (``nucleisam.data.Augmenter``): image (H,W,3 uint8), labels (H,W int),
    vague mask (H,W bool or None) and float maps transformed alike, reproducible from ``rng``."""

    def __call__(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        vague: np.ndarray | None = None,
        maps: dict[str, np.ndarray] | None = None,
        *,
        rng: np.random.Generator,
    ) -> Augmented: ...


def _default_targets(labels: np.ndarray) -> dict[str, np.ndarray]:
    from nucleisam.data import instance_targets

    return instance_targets(labels)


@dataclass(frozen=True)
class DecodedSample:
    """One decoded sample: RGB uint8 (H,W,3), int32 labels (H,W), bool vague mask or None, and the
    float32 target maps of :data:`TARGET_KEYS`."""

    image: np.ndarray
    labels: np.ndarray
    vague: np.ndarray | None
    targets: Mapping[str, np.ndarray]


class SampleCache:
    """Decoded tiles and targets by stem: ``mode`` "memory", "disk" (memory + ``directory``), "none"."""

    def __init__(
        self,
        mode: str = "memory",
        directory: str | os.PathLike[str] | None = None,
        *,
        targets_fn: TargetsFn | None = None,
    ) -> None:
        if mode not in ("memory", "disk", "none"):
            raise ValueError(f"cache mode must be 'memory', 'disk' or 'none', not {mode!r}")
        if mode == "disk" and directory is None:
            raise ValueError("a disk cache needs a directory")
        self.mode = mode
        self.directory = Path(directory) if directory is not None else None
        self.targets_fn = targets_fn or _default_targets
        self._memory: dict[str, DecodedSample] = {}

    def _disk_path(self, sample: SampleLike) -> Path:
        """A file name that changes whenever one of the tile's source files changes."""
        digest = hashlib.sha256()
        for path in (sample.image_path, sample.labels_path, sample.vague_path):
            if path is None:
                digest.update(b"none")
                continue
            stat = Path(path).stat()
            digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        assert self.directory is not None
        return self.directory / f"{sample.stem}-{digest.hexdigest()[:16]}.npz"

    def _load(self, sample: SampleLike) -> DecodedSample:
        image = sample.load_image()
        labels = sample.load_labels().astype(np.int32, copy=False)
        vague = sample.load_vague()
        if self.mode == "disk":
            file = self._disk_path(sample)
            if file.is_file():
                with np.load(file) as stored:
                    targets = {k: stored[k] for k in TARGET_KEYS}
                return DecodedSample(image, labels, vague, targets)
        targets = {k: np.asarray(v, dtype=np.float32) for k, v in self.targets_fn(labels).items()}
        if self.mode == "disk":
            with atomic_output(self._disk_path(sample)) as tmp, open(tmp, "wb") as handle:
                np.savez_compressed(handle, **{k: targets[k] for k in TARGET_KEYS})
        return DecodedSample(image, labels, vague, targets)

    def get(self, sample: SampleLike) -> DecodedSample:
        cached = self._memory.get(sample.stem)
        if cached is not None:
            return cached
        data = self._load(sample)
        if self.mode != "none":
            self._memory[sample.stem] = data
        return data

    def prefill(
        self, samples: Sequence[SampleLike], progress: Callable[[Iterator], Iterator] | None = None
    ) -> None:
        """Decode every sample now (before workers fork) so that they share the cache."""
        if self.mode == "none":
            return
        items: Iterator = iter(samples)
        for sample in progress(items) if progress else items:
            self.get(sample)


def tile_tensors(data: DecodedSample) -> dict[str, torch.Tensor]:
    """Tensors of one tile: ``image`` (3,H,W) float 0–255, each target (1,H,W) float32, ``valid``
    (1,H,W) float32 that is 0 inside vague areas."""
    out = {"image": image_to_tensor(data.image)}
    for key in TARGET_KEYS:
        out[key] = torch.from_numpy(np.ascontiguousarray(data.targets[key], dtype=np.float32))[None]
    valid = (
        np.ones(data.labels.shape, np.float32)
        if data.vague is None
        else (~data.vague).astype(np.float32)
    )
    out["valid"] = torch.from_numpy(valid)[None]
    return out


class TrainingDataset(torch.utils.data.Dataset):
    """Tiles of ``samples`` as tensor dicts (see :func:`tile_tensors`) plus ``index``.

    Items are addressed by ``(epoch, index)`` (from :class:`EpochSampler`) or by a plain index
    (epoch 0). With ``augment``, the cached distance maps are transformed with the image (no
    recomputation) and the foreground target is taken from the augmented labels, so it stays exact.
    """

    def __init__(
        self,
        samples: Sequence[SampleLike],
        cache: SampleCache,
        *,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        self.samples = list(samples)
        self.cache = cache
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        data = self.cache.get(self.samples[index])
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            distances = {k: v for k, v in data.targets.items() if k != "foreground"}
            out = self.augment(data.image, data.labels, data.vague, distances, rng=rng)
            targets = {"foreground": (out.labels > 0).astype(np.float32), **out.maps}
            data = DecodedSample(out.image, out.labels, out.vague, targets)
        return {**tile_tensors(data), "index": index}


class EpochSampler(Sampler[tuple[int, int]]):
    """Wraps an index sampler and tags each index with the current epoch (set with :meth:`set_epoch`).

    Persistent data-loader workers never see the main process's attributes change; the tag carries
    the epoch to them with every item.
    """

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.sampler:
            yield (self.epoch, int(index))

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


def pad_collate(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack tile dicts into a batch, zero-padding tiles of different sizes at the bottom/right.

    Padded pixels get ``valid`` = 0, so they never count in a loss.
    """
    height = max(item["image"].shape[-2] for item in items)
    width = max(item["image"].shape[-1] for item in items)
    batch: dict[str, torch.Tensor] = {}
    for key, value in items[0].items():
        if isinstance(value, torch.Tensor):
            tensors = [
                F.pad(item[key], (0, width - item[key].shape[-1], 0, height - item[key].shape[-2]))
                for item in items
            ]
            batch[key] = torch.stack(tensors)
        else:
            batch[key] = torch.tensor([item[key] for item in items])
    return batch
