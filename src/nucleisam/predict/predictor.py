"""Whole-image inference: a fine-tuned NucleiSam (or the classical baseline) on images of any size.

A :class:`Predictor` pairs a network with post-processing and runs both tile by tile
(:func:`~nucleisam.predict.tiling.predict_tiled`):

>>> predictor = Predictor.from_adapter("runs/fold0/adapter.safetensors")   # doctest: +SKIP
>>> labels = predictor(image)                                              # int32 (H, W)
>>> result = predictor.predict(image, return_maps=True)                    # + maps, timings

``Predictor.classical()`` runs the hematoxylin-threshold-and-watershed baseline instead; it needs
no model and no weights.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nucleisam.config import NUINSSEG_MPP, PostprocessConfig
from nucleisam.errors import NucleisamError
from nucleisam.predict.tiling import LabelFn, MapFn, check_postprocess_workers, check_tiling, predict_tiled
from nucleisam.utils.pool import available_cores

if TYPE_CHECKING:
    import torch


@dataclass
class Prediction:
    """The result for one image.

    Attributes:
        labels: int32 (H, W) instance ids 1..n_nuclei, 0 = background.
        n_nuclei: number of instances.
        n_tiles: windows the image was cut into.
        seconds: wall time of the whole prediction.
        network_seconds: time spent in the network (0 for the classical method).
        postprocess_seconds: time spent turning maps into instances, summed over the post-processing
            threads (with ``postprocess_workers`` ≥ 1 it overlaps the network and can exceed
            ``seconds``).
        maps: full-size float32 maps (probabilities / distances in [0, 1]) when asked for.
    """

    labels: np.ndarray
    n_nuclei: int
    n_tiles: int
    seconds: float
    network_seconds: float
    postprocess_seconds: float
    maps: dict[str, np.ndarray] | None = None


#: ``postprocess_workers`` of the factories: a number of threads, or ``"auto"``
#: (:func:`auto_postprocess_workers`).
PostprocessWorkers = int | Literal["auto"]


def auto_postprocess_workers(network: str, cores: int | None = None) -> int:
    """Post-processing threads for ``"auto"``: ``network`` is where the network runs (``"cuda"``,
    ``"cpu"``, or ``"none"`` for the classical method), ``cores`` the cores this process may use
    (default :func:`available_cores`; a Dask worker's share on a local cluster). One core: none.

    With the network on a GPU, every core but the one that drives it and stitches. With no network,
    every core: this thread only cuts tiles and stitches, and waits for the pool the rest of the
    time. With the network on the CPU, one: torch's threads already use every core and
    post-processing is a few percent of a tile's time there, but one thread hiding it was ahead of
    serial in both runs of ``benchmarks/predict.py --sections overlap`` on two cores (1.14 and 1.24
    tiles/s against 1.05 and 1.17), two threads in one run only.
    """
    cores = available_cores() if cores is None else cores
    if cores <= 1:
        return 0
    return {"cuda": cores - 1, "cpu": 1}.get(network, cores)


def resolve_postprocess_workers(setting: PostprocessWorkers, network: str, cores: int | None = None) -> int:
    """``setting`` (a number of threads, or ``"auto"``) as a number of threads."""
    if setting == "auto":
        return auto_postprocess_workers(network, cores)
    check_postprocess_workers(setting)
    return setting


def _label_fn(postprocess: PostprocessConfig | LabelFn | None) -> LabelFn:
    if callable(postprocess):
        return postprocess
    from nucleisam.postprocess import instances_from_maps

    config = postprocess if postprocess is not None else PostprocessConfig()

    def label_fn(maps: Mapping[str, np.ndarray], image: np.ndarray) -> np.ndarray:
        return instances_from_maps(dict(maps), config)

    return label_fn


class Predictor:
    """Segments nuclei in RGB images of any size, tile by tile, with seam-free stitching.

    Build it with :meth:`from_adapter`, :meth:`from_model` or :meth:`classical`.

    Args:
        label_fn: post-processing of one tile, ``(maps, tile_image) -> labels``.
        map_fn: network on a tile batch (``None`` for methods that work from the image alone).
        tile, overlap, batch_size: tiling (see :func:`~nucleisam.predict.tiling.predict_tiled`).
        description: one line naming the method, for logs.
        mpp: microns per pixel of the images the method was trained or tuned at (``None``: unknown);
            a slide is read and resampled to this resolution before prediction.
        postprocess_workers: threads post-processing one batch's tiles while the network runs the
            next (0: one after the other in the calling thread). The output is the same either way;
            ``label_fn`` must then be safe to call from several threads at once (the package's
            post-processing is). The factories take ``"auto"`` too (their default,
            :func:`auto_postprocess_workers`).
    """

    def __init__(
        self,
        *,
        label_fn: LabelFn,
        map_fn: MapFn | None = None,
        tile: int = 512,
        overlap: int = 64,
        batch_size: int = 4,
        description: str = "",
        mpp: float | None = None,
        postprocess_workers: int = 0,
    ) -> None:
        check_tiling(tile, overlap)
        check_postprocess_workers(postprocess_workers)
        if batch_size < 1:
            raise NucleisamError(f"batch_size={batch_size} is not valid: it must be at least 1.")
        self.label_fn = label_fn
        self.map_fn = map_fn
        self.tile = tile
        self.overlap = overlap
        self.batch_size = batch_size
        self.description = description
        self.mpp = mpp
        self.postprocess_workers = postprocess_workers

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        *,
        postprocess: PostprocessConfig | LabelFn | None = None,
        device: str = "auto",
        precision: str = "auto",
        tile: int = 512,
        overlap: int = 64,
        batch_size: int = 4,
        description: str = "model",
        mpp: float | None = NUINSSEG_MPP,
        postprocess_workers: PostprocessWorkers = "auto",
    ) -> Predictor:
        """A predictor around a model obeying the NucleiSam contract.

        ``postprocess`` is a :class:`~nucleisam.config.PostprocessConfig` (default: its
        defaults) for :func:`~nucleisam.postprocess.instances_from_maps`, or any ``(maps, image) ->
        labels`` function. ``device`` is ``auto|cpu|cuda[:N]``; ``precision`` follows
        :func:`nucleisam.model.inference.resolve_precision` (the policy validation uses too);
        ``mpp`` is the model's training resolution (default NuInsSeg's).
        """
        from nucleisam.model.inference import resolve_device, tile_map_fn

        resolved = resolve_device(device)
        workers = resolve_postprocess_workers(postprocess_workers, resolved.type)
        map_fn = tile_map_fn(model, resolved, precision)
        return cls(label_fn=_label_fn(postprocess), map_fn=map_fn, tile=tile, overlap=overlap,
                   batch_size=batch_size, description=description, mpp=mpp, postprocess_workers=workers)

    @classmethod
    def from_adapter(
        cls,
        path: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str] | None = None,
        device: str = "auto",
        tile: int = 512,
        overlap: int = 64,
        batch_size: int = 4,
        *,
        allow_checkpoint_mismatch: bool = False,
        precision: str = "auto",
        postprocess_workers: PostprocessWorkers = "auto",
    ) -> Predictor:
        """Load a fine-tuned adapter (and its base checkpoint) with the post-processing parameters
        and training resolution recorded in it (defaults where none were recorded)."""
        from nucleisam.model import (
            adapter_postprocess,
            adapter_train_mpp,
            load_adapter,
            read_adapter_metadata,
        )

        check_tiling(tile, overlap)
        if postprocess_workers != "auto":
            check_postprocess_workers(postprocess_workers)
        # Checked before the network is built: bad parameters fail in milliseconds, not seconds.
        metadata = read_adapter_metadata(path)
        config = adapter_postprocess(metadata, path)
        model, _ = load_adapter(path, checkpoint=checkpoint,
                                allow_checkpoint_mismatch=allow_checkpoint_mismatch)
        return cls.from_model(
            model, postprocess=config, device=device, precision=precision, tile=tile, overlap=overlap,
            batch_size=batch_size, description=f"adapter {os.fspath(path)}", mpp=adapter_train_mpp(metadata),
            postprocess_workers=postprocess_workers,
        )

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        *,
        tile: int | None = None,
        overlap: int = 64,
        batch_size: int = 4,
        threads: int | None = None,
        postprocess_workers: PostprocessWorkers = "auto",
    ) -> Predictor:
        """Run a model written by ``nucleisam export --format onnx`` with ONNX Runtime, with the
        post-processing parameters and training resolution recorded in it. ``tile`` must be the
        file's fixed input size (``None``: that size)."""
        from nucleisam.model import adapter_postprocess, adapter_train_mpp
        from nucleisam.model.onnx_runtime import OnnxMapFn

        workers = resolve_postprocess_workers(postprocess_workers, "cpu")  # ONNX Runtime runs on the CPU
        map_fn = OnnxMapFn(path, threads=threads)
        if tile is not None and tile != map_fn.input_size:
            raise NucleisamError(
                f"--tile {tile}: {os.fspath(path)} was exported for {map_fn.input_size}×{map_fn.input_size} "
                f"tiles; use --tile {map_fn.input_size} or export again with --input-size {tile}."
            )
        metadata = map_fn.metadata
        return cls(label_fn=_label_fn(adapter_postprocess(metadata, path)), map_fn=map_fn,
                   tile=map_fn.input_size, overlap=overlap, batch_size=batch_size,
                   description=f"ONNX model {os.fspath(path)}", mpp=adapter_train_mpp(metadata),
                   postprocess_workers=workers)

    @classmethod
    def classical(cls, *, tile: int = 512, overlap: int = 64,
                  postprocess_workers: PostprocessWorkers = "auto", **params: Any) -> Predictor:
        """The classical baseline (hematoxylin threshold + watershed), no model or weights, at its
        working resolution; ``params`` go to :func:`nucleisam.classical.classical_instances`."""
        from nucleisam.classical import CLASSICAL_MPP, classical_instances

        def label_fn(maps: Mapping[str, np.ndarray], image: np.ndarray) -> np.ndarray:
            return classical_instances(image, **params)

        workers = resolve_postprocess_workers(postprocess_workers, "none")
        return cls(label_fn=label_fn, tile=tile, overlap=overlap, description="classical baseline",
                   mpp=CLASSICAL_MPP, postprocess_workers=workers)

    def predict(
        self,
        image: np.ndarray,
        *,
        return_maps: bool = False,
        on_tile_done: Callable[[int], object] | None = None,
    ) -> Prediction:
        """Segment one RGB ``uint8`` (H, W, 3) image."""
        timings = {"network": 0.0, "postprocess": 0.0}
        lock = threading.Lock()  # post-processing threads add their time concurrently

        def timed_map_fn(tiles: np.ndarray) -> Mapping[str, np.ndarray]:
            start = time.perf_counter()
            assert self.map_fn is not None
            maps = self.map_fn(tiles)
            timings["network"] += time.perf_counter() - start
            return maps

        def timed_label_fn(maps: Mapping[str, np.ndarray], tile_image: np.ndarray) -> np.ndarray:
            start = time.perf_counter()
            labels = self.label_fn(maps, tile_image)
            with lock:
                timings["postprocess"] += time.perf_counter() - start
            return labels

        start = time.perf_counter()
        result = predict_tiled(
            image,
            label_fn=timed_label_fn,
            map_fn=timed_map_fn if self.map_fn is not None else None,
            tile=self.tile,
            overlap=self.overlap,
            batch_size=self.batch_size,
            return_maps=return_maps,
            on_tile_done=on_tile_done,
            postprocess_workers=self.postprocess_workers,
        )
        return Prediction(
            labels=result.labels,
            n_nuclei=result.n_instances,
            n_tiles=result.n_tiles,
            seconds=time.perf_counter() - start,
            network_seconds=timings["network"],
            postprocess_seconds=timings["postprocess"],
            maps=result.maps,
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Instance labels, int32 (H, W)."""
        return self.predict(image).labels
