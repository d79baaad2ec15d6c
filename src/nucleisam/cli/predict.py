"""`nucleisam predict`: segment nuclei in images and whole slides of any size, and export them."""

from __future__ import annotations

import argparse
import math

from nucleisam.cli.options import add_option, add_options
from nucleisam.errors import NucleisamError
from nucleisam.exports import EXPORT_FORMATS
from nucleisam.exports.slides import DEFAULT_SLIDE_FORMATS, SLIDE_FORMATS

DEFAULT_TILE = 512


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment nuclei in images and whole slides; export labels, GeoJSON, CSV/Parquet, overlays",
        description="Segment nuclei with a fine-tuned adapter (--adapter), a model exported to ONNX "
        "(--backend onnxruntime --model FILE.onnx) or the classical baseline (--method classical) in "
        "PNG/JPEG/TIFF images (tiled, seam-free) and whole slides (SVS, NDPI, "
        "MRXS, SCN, OME-TIFF, pyramidal TIFF; streamed chunk by chunk, optionally on Dask). Per image: "
        "<stem>_labels.tif, <stem>_nuclei.geojson (QuPath detections), <stem>_nuclei.csv, "
        "<stem>_overlay.png; per slide: <stem>_nuclei.parquet/.csv/.geojson, <stem>_labels.zarr "
        "(OME-Zarr; --formats ome-tiff adds <stem>_labels.ome.tif), <stem>_overlay.png (thumbnail), "
        "<stem>_tissue.png. <out>/manifest.csv records every input; rerunning skips those done with the "
        "same method and parameters.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="images or slides: files, folders (their images), glob patterns (quote them; "
                        "** allowed) or CSV lists of paths")
    add_option(parser.add_argument_group("data"), "mpp")
    add_options(parser.add_argument_group("model"), ("adapter", "method", "checkpoint",
                                                      "allow_checkpoint_mismatch", "model", "backend"))
    add_options(parser.add_argument_group("run"), ("tile", "overlap", "batch_size", "device",
                                                    "postprocess_workers"))
    add_options(parser.add_argument_group("whole slides"), ("tissue", "workers", "scheduler", "chunk_tiles"))
    output = parser.add_argument_group("output")
    add_option(output, "out", required=True)
    formats = ",".join(dict.fromkeys(EXPORT_FORMATS + SLIDE_FORMATS))
    add_option(output, "formats", help=f"comma-separated subset of {formats}",
               default_text=f"images {','.join(EXPORT_FORMATS)}; slides {','.join(DEFAULT_SLIDE_FORMATS)}")
    add_option(output, "overwrite")
    parser.set_defaults(handler=run_predict)


def _method(args: argparse.Namespace) -> str:
    """``model``, ``onnx`` (an exported model in ONNX Runtime) or ``classical``."""
    method = args.method or ("model" if args.adapter or args.model else None)
    if method is None:
        raise NucleisamError(
            "choose a method: --adapter FILE (a fine-tuned model), --backend onnxruntime --model FILE.onnx "
            "(an exported one) or --method classical."
        )
    if method == "classical" and (args.adapter or args.checkpoint or args.model):
        raise NucleisamError(
            "--method classical uses no model: drop --adapter/--checkpoint/--model, or drop --method."
        )
    if method == "model" and args.backend == "onnxruntime":
        if not args.model or args.adapter or args.checkpoint:
            raise NucleisamError(
                "--backend onnxruntime runs an exported file: give --model FILE.onnx (write it with "
                "`nucleisam export --adapter A.safetensors --format onnx --out FILE.onnx`), not --adapter."
            )
        return "onnx"
    if method == "model" and args.model:
        raise NucleisamError("--model FILE.onnx runs with --backend onnxruntime: add it, or give --adapter.")
    if method == "model" and not args.adapter:
        raise NucleisamError("--method model needs --adapter FILE (the .safetensors file training wrote).")
    return method


def _tile(args: argparse.Namespace, method: str) -> int:
    """``--tile``, or its default: 512, or an exported model's fixed input size (which it must be)."""
    if method != "onnx":
        return args.tile if args.tile is not None else DEFAULT_TILE
    from nucleisam.model.export import read_export_metadata

    size = int(read_export_metadata(args.model)["input_size"])
    if args.tile is not None and args.tile != size:
        raise NucleisamError(
            f"--tile {args.tile}: {args.model} was exported for {size}×{size} tiles; use --tile {size} or "
            f"export again with --input-size {args.tile}."
        )
    return size


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
    tile = _tile(args, method)
    check_tiling(tile, args.overlap)
    if args.batch_size < 1:
        raise NucleisamError(f"--batch-size {args.batch_size} must be at least 1.")
    if args.workers < 0:
        raise NucleisamError(f"--workers {args.workers} must be 0 or more.")
    if args.chunk_tiles < 1:
        raise NucleisamError(f"--chunk-tiles {args.chunk_tiles} must be at least 1.")
    formats = check_formats(args.formats.split(",")) if args.formats is not None else None
    spec = MethodSpec(
        kind=method, adapter=args.adapter, model=args.model, checkpoint=args.checkpoint, device=args.device,
        tile=tile, overlap=args.overlap, batch_size=args.batch_size,
        allow_checkpoint_mismatch=args.allow_checkpoint_mismatch,
        torch_threads=default_torch_threads(args.workers) if args.workers > 1 else None,
        postprocess_workers=args.postprocess_workers,
    )
    options = CohortOptions(method=spec, formats=formats, tissue=args.tissue, mpp=args.mpp,
                            overwrite=args.overwrite, workers=args.workers, scheduler=args.scheduler,
                            chunk_tiles=args.chunk_tiles)
    run_cohort(args.inputs, args.out, options)
    return 0
