"""`nucleisam predict`: segment nuclei in images and whole slides of any size, and export them."""

from __future__ import annotations

import argparse
import math

from nucleisam.errors import NucleisamError
from nucleisam.exports import EXPORT_FORMATS
from nucleisam.exports.slides import DEFAULT_SLIDE_FORMATS, SLIDE_FORMATS
from nucleisam.predict.slide import CHUNK_TILES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment nuclei in images and whole slides; export labels, GeoJSON, CSV/Parquet, overlays",
        description="Segment nuclei with a fine-tuned adapter (--adapter) or the classical baseline "
        "(--method classical) in PNG/JPEG/TIFF images (tiled, seam-free) and whole slides (SVS, NDPI, "
        "MRXS, SCN, OME-TIFF, pyramidal TIFF; streamed chunk by chunk, optionally on Dask). Per image: "
        "<stem>_labels.tif, <stem>_nuclei.geojson (QuPath detections), <stem>_nuclei.csv, "
        "<stem>_overlay.png; per slide: <stem>_nuclei.parquet/.csv/.geojson, <stem>_labels.zarr "
        "(OME-Zarr), <stem>_overlay.png (thumbnail), <stem>_tissue.png. <out>/manifest.csv records every "
        "input; rerunning skips those done with the same method and parameters.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="images or slides: files, folders (their images), glob patterns (quote them; "
                        "** allowed) or CSV lists of paths")
    source = parser.add_argument_group("method (one of)")
    source.add_argument("--adapter", metavar="FILE", help="fine-tuned adapter (.safetensors) from training")
    source.add_argument("--method", choices=["model", "classical"], default=None,
                        help="'classical': hematoxylin threshold + watershed, no model or weights; "
                        "'model' (default with --adapter)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="base MobileSAM checkpoint (default: the cached official mobile_sam.pt)")
    parser.add_argument("--allow-checkpoint-mismatch", action="store_true",
                        help="accept a base checkpoint other than the one the adapter was trained on")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    formats = ",".join(dict.fromkeys(EXPORT_FORMATS + SLIDE_FORMATS))
    parser.add_argument("--formats", default=None, metavar="LIST",
                        help=f"comma-separated subset of {formats} (default: images "
                        f"{','.join(EXPORT_FORMATS)}; slides {','.join(DEFAULT_SLIDE_FORMATS)})")
    parser.add_argument("--tile", type=int, default=512, help="tile size in pixels (default 512)")
    parser.add_argument("--overlap", type=int, default=64,
                        help="tile overlap in pixels, at least the largest nucleus diameter (default 64)")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per network call (default 4)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default auto: a GPU if torch sees one)")
    parser.add_argument("--mpp", type=float, default=None, metavar="MICRONS",
                        help="microns per level-0 pixel: overrides what slides record; for images adds µm² "
                        "areas to CSV/GeoJSON and resolution to the TIFF")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every input and replace existing output files")
    slides = parser.add_argument_group("whole slides")
    slides.add_argument("--tissue", default="auto", metavar="auto|none|MASK.png",
                        help="segment only tissue: detected on the thumbnail (auto, default), everywhere "
                        "(none), or where a mask image (any size, white = tissue) says")
    slides.add_argument("--workers", type=int, default=0, metavar="N",
                        help="Dask LocalCluster of N single-threaded worker processes (0 or 1: this process)")
    slides.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run on an existing Dask cluster, e.g. tcp://host:8786 (dask-jobqueue on SLURM)")
    slides.add_argument("--chunk-tiles", type=int, default=CHUNK_TILES, metavar="K",
                        help=f"tiles per side of a chunk, the unit of work (default {CHUNK_TILES})")
    parser.set_defaults(handler=run_predict)


def _method(args: argparse.Namespace) -> str:
    method = args.method or ("model" if args.adapter else None)
    if method is None:
        raise NucleisamError("choose a method: --adapter FILE (a fine-tuned model) or --method classical.")
    if method == "model" and not args.adapter:
        raise NucleisamError("--method model needs --adapter FILE (the .safetensors file training wrote).")
    if method == "classical" and (args.adapter or args.checkpoint):
        raise NucleisamError(
            "--method classical uses no model: drop --adapter/--checkpoint, or drop --method."
        )
    return method


def run_predict(args: argparse.Namespace) -> int:
    from nucleisam.batch import CohortOptions, check_formats, run_cohort
    from nucleisam.predict.distributed import MethodSpec, default_torch_threads
    from nucleisam.predict.tiling import check_tiling

    method = _method(args)
    if method == "model":
        from nucleisam.model.inference import resolve_device

        resolve_device(args.device)
    if args.mpp is not None and not (args.mpp > 0 and math.isfinite(args.mpp)):
        raise NucleisamError(f"--mpp {args.mpp} must be a positive number of microns per pixel.")
    check_tiling(args.tile, args.overlap)
    if args.batch_size < 1:
        raise NucleisamError(f"--batch-size {args.batch_size} must be at least 1.")
    if args.workers < 0:
        raise NucleisamError(f"--workers {args.workers} must be 0 or more.")
    if args.chunk_tiles < 1:
        raise NucleisamError(f"--chunk-tiles {args.chunk_tiles} must be at least 1.")
    formats = check_formats(args.formats.split(",")) if args.formats is not None else None
    spec = MethodSpec(
        kind=method, adapter=args.adapter, checkpoint=args.checkpoint, device=args.device, tile=args.tile,
        overlap=args.overlap, batch_size=args.batch_size,
        allow_checkpoint_mismatch=args.allow_checkpoint_mismatch,
        torch_threads=default_torch_threads(args.workers) if args.workers > 1 else None,
    )
    options = CohortOptions(method=spec, formats=formats, tissue=args.tissue, mpp=args.mpp,
                            overwrite=args.overwrite, workers=args.workers, scheduler=args.scheduler,
                            chunk_tiles=args.chunk_tiles)
    run_cohort(args.inputs, args.out, options)
    return 0
