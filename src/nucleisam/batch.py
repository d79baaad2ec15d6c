"""Cohort runs of ``nucleisam predict``: many images and slides into one output folder, resumably.

Every input gets a row in ``<out>/manifest.csv`` (``input, status, nuclei, seconds, error,
fingerprint``; ``status`` is ``done`` or ``failed``). Before an input starts, its row is set to
``failed`` / "unfinished", so a killed run leaves an honest manifest; the row becomes ``done`` only
after all of the input's outputs are in place. One bad input fails alone. Rerunning the same command
skips inputs ``done`` with the same fingerprint (nucleisam version, the adapter's and base
checkpoint's sha256, every parameter that changes the outputs), and redoes the others after removing
their partial and earlier outputs. A lock on the folder refuses a second concurrent run.

Small images (PNG, JPEG, single-level TIFF up to 4096² px) keep the in-memory path and its outputs
(:func:`~nucleisam.exports.export_all`); slides stream through
:mod:`nucleisam.predict.slide` chunk by chunk, on Dask workers when asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nucleisam import __version__
from nucleisam.data.tissue import TISSUE_THUMBNAIL_SIZE
from nucleisam.errors import NucleisamError
from nucleisam.exports.images import EXPORT_FORMATS, OUTPUT_SUFFIXES, export_all
from nucleisam.exports.slides import (
    DEFAULT_SLIDE_FORMATS,
    SLIDE_FORMATS,
    SLIDE_SUFFIXES,
    SlideWriter,
    remove_partials,
    remove_path,
)
from nucleisam.predict.assemble import SlideAssembler
from nucleisam.predict.distributed import ChunkRunner, MethodSpec, cached_predictor, method_mpp, open_runner
from nucleisam.predict.inputs import (
    INPUT_SUFFIXES,
    MANIFEST_NAME,
    check_unique_stems,
    collect_inputs,
    output_stem,
)
from nucleisam.predict.slide import CHUNK_TILES, SlideJob, plan_chunks, slide_geometry, tissue_tiles
from nucleisam.predict.tiling import TileGrid
from nucleisam.utils.atomic import check_outputs_free, ensure_output_dir
from nucleisam.utils.lock import FolderLock
from nucleisam.utils.tables import read_rows_csv, write_rows_csv

MANIFEST_TEXT = ("input", "status", "error", "fingerprint")
UNFINISHED = "unfinished: the run stopped while processing it"
#: Seconds between progress lines when stderr is not a terminal.
LOG_INTERVAL = 30.0


@dataclass(frozen=True)
class CohortOptions:
    """What ``nucleisam predict`` does to each input (everything but the inputs and the folder).

    ``formats`` ``None`` means each kind's defaults (images: label TIFF, GeoJSON, CSV, overlay;
    slides: :data:`~nucleisam.exports.slides.DEFAULT_SLIDE_FORMATS`). ``tissue`` is ``"auto"``,
    ``"none"`` or the path of a mask PNG. ``mpp`` overrides the slides' (and labels images') resolution.
    """

    method: MethodSpec
    formats: tuple[str, ...] | None = None
    tissue: str = "auto"
    mpp: float | None = None
    overwrite: bool = False
    workers: int = 0
    scheduler: str | None = None
    chunk_tiles: int = CHUNK_TILES


@dataclass
class Outcome:
    """One input's manifest row."""

    input: str
    status: str
    nuclei: int = 0
    seconds: float = 0.0
    error: str = ""
    fingerprint: str = ""
    skipped: bool = field(default=False, compare=False)

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "skipped"}


def _sha256(path: str, option: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise NucleisamError(f"{option} {path}: cannot read it ({exc.strerror or exc}).") from exc
    return digest.hexdigest()


def fingerprint(options: CohortOptions) -> str:
    """What makes two runs' outputs the same: version, weights' contents, output-changing parameters."""
    method = options.method
    tissue = options.tissue if options.tissue in ("auto", "none") else _sha256(options.tissue, "--tissue")
    parts = {
        "nucleisam": __version__, "method": method.kind, "tile": method.tile, "overlap": method.overlap,
        "adapter": _sha256(method.adapter, "--adapter") if method.adapter else None,
        "checkpoint": _sha256(method.checkpoint, "--checkpoint") if method.checkpoint else None,
        "formats": options.formats, "tissue": tissue, "mpp": options.mpp, "chunk_tiles": options.chunk_tiles,
    }
    if method.model:  # only then, so that earlier manifests' fingerprints stay valid
        parts["model"] = _sha256(method.model, "--model")
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def check_formats(formats: Sequence[str] | None) -> tuple[str, ...] | None:
    """Validate ``--formats`` (image and slide format names); ``None`` keeps each kind's defaults."""
    if formats is None:
        return None
    names = tuple(dict.fromkeys(item.strip().lower() for item in formats if item.strip()))
    known = tuple(dict.fromkeys(EXPORT_FORMATS + SLIDE_FORMATS))
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise NucleisamError(f"unknown format(s) {', '.join(unknown) or '(none given)'} (formats); "
                             f"choose from {','.join(known)}.")
    return names


def _kind_formats(options: CohortOptions, kind: str, path: Path | None = None) -> tuple[str, ...]:
    """The requested formats an image (``kind="image"``) or a slide writes; none at all is an error
    naming ``path``."""
    supported, default = (EXPORT_FORMATS, EXPORT_FORMATS) if kind == "image" else (
        SLIDE_FORMATS, DEFAULT_SLIDE_FORMATS)
    if options.formats is None:
        return default
    chosen = tuple(name for name in options.formats if name in supported)
    if not chosen and path is not None:
        raise NucleisamError(f"--formats {','.join(options.formats)} writes nothing for the {kind} {path}; "
                             f"{kind}s write {','.join(supported)}.")
    return chosen


def _all_suffixes() -> list[str]:
    return sorted(set(OUTPUT_SUFFIXES.values()) | set(SLIDE_SUFFIXES.values()))


def own_output_suffixes() -> list[str]:
    """The output names that read as input images (label TIFFs, overlay and tissue PNGs): what an
    earlier run left in a folder that is expanded again."""
    return [suffix for suffix in _all_suffixes() if suffix.lower().endswith(INPUT_SUFFIXES)]


def _possible_outputs(out: Path, stem: str) -> list[Path]:
    return [out / f"{stem}{suffix}" for suffix in _all_suffixes()]


class Progress:
    """An overall bar (inputs) and a per-input tile bar on a terminal; periodic lines otherwise."""

    def __init__(self, total: int, *, stream: Any = None) -> None:
        from tqdm import tqdm

        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = tqdm(total=total, desc="inputs", unit="input", file=self.stream,
                        disable=not self.interactive)
        self.tiles = None
        self.total_tiles = 0
        self._logged = time.monotonic()
        self._name, self._done, self._todo, self._start = "", 0, 0, time.monotonic()

    def start(self, name: str, tiles: int) -> None:
        from tqdm import tqdm

        self._name, self._done, self._todo, self._start = name, 0, tiles, time.monotonic()
        self.tiles = tqdm(total=tiles, desc=name, unit="tile", leave=False, file=self.stream,
                          disable=not self.interactive)

    def advance(self, tiles: int) -> None:
        self._done += tiles
        self.total_tiles += tiles
        if self.tiles is not None:
            self.tiles.update(tiles)
        if not self.interactive and time.monotonic() - self._logged >= LOG_INTERVAL:
            self._logged = time.monotonic()
            rate = self._done / max(time.monotonic() - self._start, 1e-9)
            eta = (self._todo - self._done) / rate if rate > 0 else math.inf
            print(f"nucleisam: {self._name}: {self._done}/{self._todo} tiles ({rate:.1f}/s, ETA {eta:.0f} s);"
                  f" input {self.bar.n + 1}/{self.bar.total}", file=self.stream, flush=True)

    def end(self) -> None:
        if self.tiles is not None:
            self.tiles.close()
            self.tiles = None
        self.bar.update(1)
        self.bar.set_postfix(tiles=self.total_tiles)

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


class Manifest:
    """``<out>/manifest.csv``: one row per input, rewritten atomically after every change."""

    def __init__(self, out: Path) -> None:
        self.path = out / MANIFEST_NAME
        try:
            rows = read_rows_csv(self.path, text_columns=MANIFEST_TEXT)
        except (ValueError, KeyError, OSError) as exc:
            raise NucleisamError(f"cannot read {self.path} ({exc}); fix or remove it to start afresh."
                                 ) from exc
        self.rows: dict[str, dict[str, Any]] = {str(row.get("input", "")): row for row in rows}

    def done(self, key: str, print_: str) -> bool:
        row = self.rows.get(key)
        return row is not None and row.get("status") == "done" and row.get("fingerprint") == print_

    def record(self, outcome: Outcome) -> None:
        self.rows[outcome.input] = outcome.row()
        write_rows_csv(self.path, list(self.rows.values()))


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, NucleisamError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def _tissue_mask(tissue: str, slide: Any, thumbnail: np.ndarray) -> np.ndarray | None:
    """The tissue mask at the thumbnail's size (``None``: everything is tissue): detected on the
    thumbnail (``auto``) or the user's mask of the whole slide, scaled."""
    from nucleisam.data.tissue import detect_tissue, read_tissue_mask

    if tissue == "none":
        return None
    if tissue == "auto":
        return detect_tissue(thumbnail)
    from PIL import Image

    mask = Image.fromarray(read_tissue_mask(tissue, slide).mask)
    return np.asarray(mask.resize((thumbnail.shape[1], thumbnail.shape[0]), Image.Resampling.NEAREST))


def _is_slide(slide: Any) -> bool:
    """Slides take the streaming path; small single-level images keep the in-memory one."""
    from nucleisam.data.slides import IN_MEMORY_MAX_PIXELS

    width, height = slide.dimensions
    return slide.backend != "memory" and (slide.level_count > 1 or width * height > IN_MEMORY_MAX_PIXELS)


def _process_image(path: Path, image: np.ndarray, out: Path, options: CohortOptions,
                   progress: Progress) -> tuple[int, str]:
    """Segment the decoded pixels ``image`` of ``path`` in memory and export them."""
    height, width = image.shape[:2]
    method = options.method
    grid = TileGrid.for_image(height, width, tile=method.tile, overlap=method.overlap)
    progress.start(path.name, len(grid))
    result = cached_predictor(method).predict(image, on_tile_done=progress.advance)
    export_all(result.labels, image, out, output_stem(path), formats=_kind_formats(options, "image", path),
               mpp=options.mpp, overwrite=True)
    return result.n_nuclei, f"{width}×{height} px, {result.n_tiles} tiles"


def _process_slide(slide: Any, out: Path, options: CohortOptions, runner: ChunkRunner,
                   progress: Progress) -> tuple[int, str]:
    from nucleisam.data.slides import working_level

    method = options.method
    formats = _kind_formats(options, "slide", slide.path)
    geometry = slide_geometry(slide, *working_level(slide, method_mpp(method)))
    thumbnail = slide.thumbnail(TISSUE_THUMBNAIL_SIZE)  # tissue is detected and the overlay drawn on it
    mask = _tissue_mask(options.tissue, slide, thumbnail)
    grid = TileGrid.for_image(geometry.height, geometry.width, tile=method.tile, overlap=method.overlap)
    has_tissue = tissue_tiles(grid, mask)
    chunks = plan_chunks(grid, has_tissue, options.chunk_tiles)
    run = None if mask is None else has_tissue.reshape(len(grid.origins_y), len(grid.origins_x))
    job = SlideJob(str(slide.path), options.mpp, geometry, grid, options.chunk_tiles, method, run)
    n_tiles = sum(len(chunk.tiles) for chunk in chunks)
    progress.start(slide.path.name, n_tiles)
    with SlideWriter(out, output_stem(slide.path), formats, geometry=geometry,
                     dimensions=slide.dimensions, thumbnail=thumbnail, tissue=mask) as writer:
        assembler = SlideAssembler(geometry, grid, chunks, options.chunk_tiles, writer.write)
        for result in runner(job, chunks):
            assembler.add(result)
            progress.advance(result.n_tiles)
    width, height = slide.dimensions
    return assembler.n_nuclei, (f"{width}×{height} px at {geometry.mpp:.3g} µm/px, {n_tiles} of {len(grid)} "
                                f"tiles with tissue, {len(chunks)} chunks")


def _process(path: Path, out: Path, options: CohortOptions, runner: Callable[[], ChunkRunner],
             progress: Progress) -> tuple[int, str]:
    from nucleisam.data.imageio import IMAGE_SUFFIXES, read_rgb
    from nucleisam.data.slides import ArraySlide, open_image

    if path.suffix.lower() in IMAGE_SUFFIXES and path.suffix.lower() not in (".tif", ".tiff"):
        return _process_image(path, read_rgb(path), out, options, progress)
    with open_image(path, mpp=options.mpp) as slide:
        if _is_slide(slide):
            return _process_slide(slide, out, options, runner(), progress)
        # Opening a small untiled TIFF decoded it whole (read_rgb): segment those pixels rather than
        # decode the file a second time and hold two copies. Other small TIFFs were only opened lazily.
        image = slide.pixels if isinstance(slide, ArraySlide) else None
    return _process_image(path, read_rgb(path) if image is None else image, out, options, progress)


def _check_foreign_outputs(paths: list[Path], out: Path, manifest: Manifest, options: CohortOptions) -> None:
    """Files an input would write that no earlier run of ours recorded stop the run before any work."""
    suffixes = {OUTPUT_SUFFIXES[name] for name in _kind_formats(options, "image")}
    suffixes |= {SLIDE_SUFFIXES[name] for name in _kind_formats(options, "slide")}
    for path in paths:
        if str(path) not in manifest.rows:
            check_outputs_free([out / f"{output_stem(path)}{suffix}" for suffix in sorted(suffixes)],
                               overwrite=options.overwrite)


def _describe(method: MethodSpec) -> str:
    if method.kind == "onnx":
        return f"ONNX model {method.model}"
    return "classical baseline" if method.kind == "classical" else f"adapter {method.adapter}"


def _run_one(path: Path, folder: Path, options: CohortOptions, manifest: Manifest, print_: str,
             runner: Callable[[], ChunkRunner], progress: Progress) -> Outcome:
    """Process one input (or skip it when done already), keeping its manifest row honest."""
    key, stem = str(path), output_stem(path)
    if not options.overwrite and manifest.done(key, print_):
        row = manifest.rows[key]
        progress.write(f"{path}: done already with the same method and parameters ({MANIFEST_NAME}); skipped")
        progress.end()
        return Outcome(key, "done", int(row.get("nuclei", 0)), float(row.get("seconds", 0.0)), "", print_,
                       skipped=True)
    ours = key in manifest.rows
    remove_partials(folder, stem, _all_suffixes())
    if ours:  # an earlier run's outputs for this input: failed, unfinished or made differently
        for stale in _possible_outputs(folder, stem):
            remove_path(stale)
    manifest.record(Outcome(key, "failed", error=UNFINISHED, fingerprint=print_))
    start = time.perf_counter()
    try:
        nuclei, detail = _process(path, folder, options, runner, progress)
    except Exception as exc:  # one bad input fails alone; the others go on
        outcome = Outcome(key, "failed", 0, time.perf_counter() - start, _one_line(exc), print_)
        remove_partials(folder, stem, _all_suffixes())
        for written in _possible_outputs(folder, stem):
            remove_path(written)
        progress.write(f"{path}: FAILED: {outcome.error}")
    else:
        outcome = Outcome(key, "done", nuclei, time.perf_counter() - start, "", print_)
        progress.write(f"{path}: {nuclei:,} nuclei in {outcome.seconds:.1f} s ({detail})")
    progress.end()
    manifest.record(outcome)
    return outcome


def run_cohort(inputs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
               options: CohortOptions) -> list[Outcome]:
    """Segment every input into ``out`` (see the module doc); one line per input on stdout.

    Raises:
        NucleisamError: bad inputs or options, outputs of another origin in the way (without
            ``overwrite``), a concurrent run on ``out``, or any input failed (the others are done and
            recorded; the message lists the failed ones).
    """
    expanded = collect_inputs(inputs, output_suffixes=own_output_suffixes())
    paths = expanded.paths
    check_unique_stems(paths)
    if options.tissue not in ("auto", "none") and not Path(options.tissue).is_file():
        raise NucleisamError(f"--tissue {options.tissue}: no such mask file; give auto, none or a mask.")
    print_ = fingerprint(options)
    folder = ensure_output_dir(out)
    with FolderLock(folder), contextlib.ExitStack() as stack:
        manifest = Manifest(folder)
        todo = [p for p in paths if options.overwrite or not manifest.done(str(p), print_)]
        _check_foreign_outputs(todo, folder, manifest, options)
        runners: list[ChunkRunner] = []
        cluster_errors: list[NucleisamError] = []

        def runner() -> ChunkRunner:  # Dask starts only when the first slide needs it
            if cluster_errors:  # a cluster that could not be reached is not tried again for every slide
                raise cluster_errors[0]
            if not runners:
                try:
                    runners.append(stack.enter_context(open_runner(options.workers, options.scheduler)))
                except NucleisamError as exc:
                    cluster_errors.append(exc)
                    raise
            return runners[0]

        progress = Progress(len(paths))
        stack.callback(progress.close)
        if expanded.left_out:
            left_out = expanded.left_out
            progress.write(f"left out {len(left_out)} outputs of an earlier nucleisam run found in the input "
                           f"folders (such as {left_out[0]}); name them as files to segment them")
        outcomes = [_run_one(path, folder, options, manifest, print_, runner, progress) for path in paths]
    _report(outcomes, folder, options)
    return outcomes


def _report(outcomes: list[Outcome], folder: Path, options: CohortOptions) -> None:
    failed = [o for o in outcomes if o.status != "done"]
    skipped = sum(o.skipped for o in outcomes)
    nuclei = sum(o.nuclei for o in outcomes if o.status == "done")
    extra = f", {skipped} done already" if skipped else ""
    print(f"{len(outcomes)} image(s), {nuclei:,} nuclei ({_describe(options.method)}){extra}; "
          f"outputs in {folder}")
    if len(failed) == 1 and len(outcomes) == 1:
        raise NucleisamError(failed[0].error)
    if failed:
        names = ", ".join(Path(o.input).name for o in failed)
        raise NucleisamError(f"{len(failed)} of {len(outcomes)} inputs failed ({names}); the reasons are in "
                             f"{folder / MANIFEST_NAME}. Rerun the same command to retry only those.")
