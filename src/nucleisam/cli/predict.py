"""`nucleisam predict`: segment nuclei in images of any size and export them."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from nucleisam.cli.options import add_option, add_options
from nucleisam.errors import NucleisamError
from nucleisam.exports import EXPORT_FORMATS, output_paths, parse_formats
from nucleisam.utils.atomic import check_outputs_free, ensure_output_dir

DEFAULT_TILE = 512


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment nuclei in images (any size) and export labels, GeoJSON, CSV, overlays",
        description="Segment nuclei with a fine-tuned adapter (--adapter), a model exported to ONNX "
        "(--backend onnxruntime --model FILE.onnx) or the classical baseline (--method classical) in "
        "PNG/JPEG/TIFF images of any size (tiled, seam-free), and write per "
        "image: <stem>_labels.tif, <stem>_nuclei.geojson (QuPath detections), <stem>_nuclei.csv, "
        "<stem>_overlay.png.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (their images) or glob patterns (quote them; ** allowed)")
    add_option(parser.add_argument_group("data"), "mpp")
    add_options(parser.add_argument_group("model"), ("adapter", "method", "checkpoint",
                                                      "allow_checkpoint_mismatch", "model", "backend"))
    add_options(parser.add_argument_group("run"), ("tile", "overlap", "batch_size", "device"))
    output = parser.add_argument_group("output")
    add_option(output, "out", required=True)
    add_option(output, "formats", help=f"comma-separated subset of {','.join(EXPORT_FORMATS)}",
               default=",".join(EXPORT_FORMATS), default_text="all")
    add_option(output, "overwrite")
    parser.set_defaults(handler=run_predict)


def _method(args: argparse.Namespace) -> str:
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
    elif method == "model" and args.model:
        raise NucleisamError("--model FILE.onnx runs with --backend onnxruntime: add it, or give --adapter.")
    elif method == "model" and not args.adapter:
        raise NucleisamError("--method model needs --adapter FILE (the .safetensors file training wrote).")
    return method


def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from nucleisam.data.imageio import read_rgb
    from nucleisam.exports import export_all
    from nucleisam.predict.inputs import check_unique_stems, expand_inputs
    from nucleisam.predict.predictor import Predictor
    from nucleisam.predict.tiling import check_tiling

    method = _method(args)
    onnx = method == "model" and args.backend == "onnxruntime"
    if method == "model" and not onnx:
        from nucleisam.model.inference import resolve_device

        resolve_device(args.device)
    if args.mpp is not None and not (args.mpp > 0 and math.isfinite(args.mpp)):
        raise NucleisamError(f"--mpp {args.mpp} must be a positive number of microns per pixel.")
    tile = args.tile if args.tile is not None or onnx else DEFAULT_TILE  # ONNX: the file's size
    if tile is not None:
        check_tiling(tile, args.overlap)
    if args.batch_size < 1:
        raise NucleisamError(f"--batch-size {args.batch_size} must be at least 1.")
    formats = parse_formats(args.formats)
    images = expand_inputs(args.inputs)
    check_unique_stems(images)
    out = ensure_output_dir(args.out)
    # Every target checked before the (slow) model load and the first image.
    for image_path in images:
        check_outputs_free(output_paths(out, image_path.stem, formats).values(), overwrite=args.overwrite)

    if method == "classical":
        predictor = Predictor.classical(tile=tile, overlap=args.overlap)
    elif onnx:
        predictor = Predictor.from_onnx(args.model, tile=tile, overlap=args.overlap,
                                        batch_size=args.batch_size)
    else:
        predictor = Predictor.from_adapter(
            args.adapter, checkpoint=args.checkpoint, device=args.device, tile=tile,
            overlap=args.overlap, batch_size=args.batch_size,
            allow_checkpoint_mismatch=args.allow_checkpoint_mismatch,
        )

    total_nuclei = 0
    with tqdm(images, desc="images", unit="image", file=sys.stderr, disable=None) as bar:
        for image_path in bar:
            image = read_rgb(image_path)
            with tqdm(desc=image_path.name, unit="tile", leave=False, file=sys.stderr, disable=None) as tiles:
                result = predictor.predict(image, on_tile_done=tiles.update)
            export_all(result.labels, image, out, image_path.stem, formats=formats, mpp=args.mpp,
                       overwrite=args.overwrite)
            total_nuclei += result.n_nuclei
            height, width = image.shape[:2]
            bar.write(f"{image_path}: {result.n_nuclei:,} nuclei in {result.seconds:.1f} s "
                      f"({width}×{height} px, {result.n_tiles} tiles)", file=sys.stdout)
    print(f"{len(images)} image(s), {total_nuclei:,} nuclei ({predictor.description}); "
          f"outputs in {Path(out)}")
    return 0
