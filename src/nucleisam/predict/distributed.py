"""Running slide chunks in this process or on Dask workers, one model per worker.

A :class:`MethodSpec` names the method (an adapter path or the classical baseline) instead of
holding a model, so it travels to workers as a few bytes; each process builds its
:class:`~nucleisam.predict.predictor.Predictor` once, on first use, and keeps it
(:func:`cached_predictor`), and keeps its open slides likewise. A worker of an external cluster
lives across runs, so both caches check the files they were made from (:func:`file_identity`): a
slide or adapter rewritten at the same path is opened or loaded again, never served from the old
copy. :func:`open_runner` gives the function that maps :func:`process_chunk` over chunks: in this
process for ``workers <= 1`` (no Dask), on a :class:`distributed.LocalCluster` of ``workers``
single-threaded processes, or on an existing cluster (``scheduler``, e.g. dask-jobqueue on SLURM).
Results come back as they finish; :class:`~nucleisam.predict.assemble.SlideAssembler` puts them in
order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from nucleisam.errors import NucleisamError
from nucleisam.predict.predictor import PostprocessWorkers, Predictor, resolve_postprocess_workers
from nucleisam.predict.slide import Chunk, ChunkResult, SlideJob, read_working_region, segment_chunk
from nucleisam.utils.pool import available_cores

#: Chunks submitted ahead per worker: enough to keep every worker busy, few enough to bound memory.
IN_FLIGHT_PER_WORKER = 2
#: Open slides kept per process (file handles and the reader's tile cache).
OPEN_SLIDES = 4
#: Environment of local workers, set before they start (glibc reads it once). Threads: one per worker.
#: Dask's default MALLOC_TRIM_THRESHOLD_ of 64 KiB alone also fixes glibc's mmap threshold at 128 KiB,
#: so every tile-sized array is a fresh mmap that page-faults in and is unmapped again: measured 2.5×
#: slower chunks. Large buffers are reused from the heap instead (up to 256 MiB kept).
WORKER_ENVIRONMENT = {
    "OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1,
    "MALLOC_TRIM_THRESHOLD_": 256 << 20, "MALLOC_MMAP_THRESHOLD_": 32 << 20,
}

#: maps process_chunk over chunks of one slide job; yields results in completion order.
ChunkRunner = Callable[[SlideJob, Iterable[Chunk]], Iterator[ChunkResult]]


@dataclass(frozen=True)
class MethodSpec:
    """A segmentation method by name and parameters, cheap to send to workers.

    ``kind`` is ``"model"`` (``adapter`` required; ``checkpoint`` the base MobileSAM weights, default the
    cached official file), ``"onnx"`` (``model``: a file written by ``nucleisam export --format onnx``,
    run in ONNX Runtime) or ``"classical"``. ``torch_threads`` caps torch's (or ONNX Runtime's)
    threads in each process that loads the model (``None``: leave the library's default), and is
    that process's share of the cores for ``postprocess_workers``: threads post-processing tiles
    while the network runs (``"auto"``: :func:`~nucleisam.predict.predictor.auto_postprocess_workers`
    for the process's device and cores; it does not change the output, so it is not part of the
    manifest's fingerprint).
    """

    kind: str
    adapter: str | None = None
    model: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    tile: int = 512
    overlap: int = 64
    batch_size: int = 4
    allow_checkpoint_mismatch: bool = False
    torch_threads: int | None = None
    postprocess_workers: PostprocessWorkers = "auto"


def method_mpp(spec: MethodSpec) -> float:
    """The resolution (µm per pixel) ``spec`` works at: the training resolution its adapter records,
    or the classical method's (without loading any model)."""
    if spec.kind == "model" and spec.adapter:
        from nucleisam.model import adapter_train_mpp, read_adapter_metadata

        return adapter_train_mpp(read_adapter_metadata(spec.adapter))
    if spec.kind == "onnx" and spec.model:
        from nucleisam.model import adapter_train_mpp
        from nucleisam.model.export import read_export_metadata

        return adapter_train_mpp(read_export_metadata(spec.model))
    from nucleisam.classical import CLASSICAL_MPP

    return CLASSICAL_MPP


#: What a file's contents are known by without reading them: (device, inode, size, modification ns).
FileIdentity = tuple[int, int, int, int] | None

#: spec → (identities of the files it names, predictor); a rewritten file replaces the entry.
_PREDICTORS: dict[MethodSpec, tuple[tuple[FileIdentity, ...], Predictor]] = {}
#: (path, mpp override) → (the file's identity, open slide), least recently used first.
_SLIDES: OrderedDict[tuple[str, float | None], tuple[FileIdentity, Any]] = OrderedDict()


def file_identity(path: str | os.PathLike[str] | None) -> FileIdentity:
    """``path``'s identity: a new inode (a file replaced by rename), size or modification time means
    new contents. ``None`` for no path or a file that cannot be stat'ed (opening it reports why)."""
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _method_files(spec: MethodSpec) -> tuple[FileIdentity, ...]:
    return tuple(file_identity(path) for path in (spec.adapter, spec.model, spec.checkpoint))


def _worker_index(name: object) -> int | None:
    """A Dask worker's number: a LocalCluster names its workers 0, 1, ...; ``dask worker --name w
    --nworkers N`` names them w-0 ... w-(N-1). Other names (an address, by default) carry none."""
    if isinstance(name, int):
        return name
    match = re.fullmatch(r".*-(\d+)", str(name))
    return int(match.group(1)) if match else None


def _worker_device(device: str) -> str:
    """``cuda`` (or ``auto``) on a Dask worker of a multi-GPU machine → that worker's own GPU, by
    worker number. Workers that see one GPU each (dask-cuda, a SLURM job per GPU) keep ``cuda``."""
    if device not in ("cuda", "auto"):
        return device
    try:
        from distributed import get_worker

        index = _worker_index(get_worker().name)
    except (ImportError, ValueError):
        return device
    import torch

    count = torch.cuda.device_count()
    return f"cuda:{index % count}" if index is not None and count > 1 else device


def cached_predictor(spec: MethodSpec) -> Predictor:
    """This process's predictor for ``spec``, built (the model loaded) on first use and again when a
    file it names (adapter, ONNX model, base checkpoint) has been rewritten since."""
    files = _method_files(spec)
    cached = _PREDICTORS.get(spec)
    if cached is not None and cached[0] == files:
        return cached[1]
    _PREDICTORS.pop(spec, None)  # the old model goes before the new one loads, not both in memory
    cores = spec.torch_threads or available_cores()  # a local cluster's worker: its share only
    if spec.kind == "classical":
        workers = resolve_postprocess_workers(spec.postprocess_workers, "none", cores)
        predictor = Predictor.classical(tile=spec.tile, overlap=spec.overlap, postprocess_workers=workers)
    elif spec.kind == "model" and spec.adapter:
        from nucleisam.model.inference import resolve_device

        if spec.torch_threads is not None:
            import torch

            torch.set_num_threads(spec.torch_threads)
        device = _worker_device(spec.device)
        workers = resolve_postprocess_workers(spec.postprocess_workers, resolve_device(device).type, cores)
        predictor = Predictor.from_adapter(
            spec.adapter, checkpoint=spec.checkpoint, device=device, tile=spec.tile,
            overlap=spec.overlap, batch_size=spec.batch_size,
            allow_checkpoint_mismatch=spec.allow_checkpoint_mismatch, postprocess_workers=workers,
        )
    elif spec.kind == "onnx" and spec.model:
        workers = resolve_postprocess_workers(spec.postprocess_workers, "cpu", cores)
        predictor = Predictor.from_onnx(spec.model, tile=spec.tile, overlap=spec.overlap,
                                        batch_size=spec.batch_size, threads=spec.torch_threads,
                                        postprocess_workers=workers)
    else:
        raise NucleisamError(f"unknown method {spec.kind!r}; use an adapter or the classical method.")
    _PREDICTORS[spec] = files, predictor
    return predictor


def cached_slide(path: str, mpp: float | None) -> Any:
    """This process's open :class:`~nucleisam.data.slides.SlideImage` for ``path`` (least recently
    used ones closed beyond :data:`OPEN_SLIDES`; one whose file was rewritten since is closed and the
    new file opened)."""
    from nucleisam.data.slides import open_image

    key = (path, mpp)
    identity = file_identity(path)
    cached = _SLIDES.pop(key, None)
    if cached is not None:
        if cached[0] == identity:
            _SLIDES[key] = cached  # back in, as the most recently used
            return cached[1]
        cached[1].close()
    slide = open_image(path, mpp=mpp)
    _SLIDES[key] = identity, slide
    while len(_SLIDES) > OPEN_SLIDES:
        _SLIDES.popitem(last=False)[1][1].close()
    return slide


def process_chunk(job: SlideJob, chunk: Chunk) -> ChunkResult:
    """Read, segment and measure one chunk (runs on a worker, or in this process)."""
    slide = cached_slide(job.path, job.mpp_override)
    predictor = cached_predictor(job.method)
    image = read_working_region(slide, job.geometry, *chunk.region)
    return segment_chunk(job, chunk, image, predictor.label_fn, predictor.map_fn, predictor.batch_size,
                         predictor.postprocess_workers)


def run_in_process(job: SlideJob, chunks: Iterable[Chunk]) -> Iterator[ChunkResult]:
    """The runner without Dask: chunks one after another in this process."""
    for chunk in chunks:
        yield process_chunk(job, chunk)


def dask_runner(client: Any, workers: int) -> ChunkRunner:
    """A runner submitting chunks to ``client``, at most :data:`IN_FLIGHT_PER_WORKER` per worker ahead."""
    from distributed import as_completed

    def run(job: SlideJob, chunks: Iterable[Chunk]) -> Iterator[ChunkResult]:
        pending = iter(chunks)
        ahead = IN_FLIGHT_PER_WORKER * max(workers, 1)
        futures = as_completed([client.submit(process_chunk, job, chunk, pure=False)
                                for chunk in islice(pending, ahead)])
        try:
            for future in futures:
                result = future.result()  # a worker's exception is raised here
                future.release()
                following = next(pending, None)
                if following is not None:
                    futures.add(client.submit(process_chunk, job, following, pure=False))
                yield result
        finally:
            futures.clear()

    return run


def default_torch_threads(workers: int) -> int:
    """Torch threads per worker so that ``workers`` processes do not oversubscribe the cores."""
    return max(1, available_cores() // max(workers, 1))


@contextlib.contextmanager
def open_runner(workers: int = 0, scheduler: str | None = None) -> Iterator[ChunkRunner]:
    """The chunk runner for ``--workers`` / ``--scheduler``; a local cluster is shut down on exit."""
    if scheduler is None and workers <= 1:
        yield run_in_process
        return
    from distributed import Client, LocalCluster
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=30)
        except OSError as exc:
            raise NucleisamError(f"--scheduler {scheduler}: cannot connect ({exc}); start the scheduler "
                                 "first or check the address.") from exc
        with client:
            yield dask_runner(client, max(len(client.scheduler_info().get("workers", {})), 1))
        return
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENVIRONMENT}):
        # A free port for the scheduler's HTTP server: dashboard_address=None still binds 8787 and
        # warns when another run (another user's, on a shared server) holds it.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
        with cluster, Client(cluster) as client:
            yield dask_runner(client, workers)
