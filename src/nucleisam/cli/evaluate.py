"""`nucleisam evaluate`: score a folder of predicted label maps against ground truth."""

from __future__ import annotations

import argparse
import json

from nucleisam.cli.options import add_option, add_options
from nucleisam.data.download import resolve_data_root
from nucleisam.evaluate import FolderEvaluation, evaluate_folders
from nucleisam.metrics import METRIC_NAMES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted instance label maps (Dice, AJI, AJI+, PQ, mSA) against ground truth",
        description="Score a folder of predicted instance label maps against ground truth, paired by file "
        "stem, with the field's definitions (HoVer-Net Dice/AJI/AJI+/PQ, micro-sam mSA) and NucEval's "
        "conventions for empty maps and vague areas.",
    )
    data = parser.add_argument_group("data")
    add_option(data, "pred")
    truth = data.add_mutually_exclusive_group(required=True)
    add_option(truth, "data", help="NuInsSeg root or organ folder, or 'nuinsseg' for the downloaded copy: "
               "its 'label masks modify' and vague areas are the ground truth")
    add_option(truth, "masks")
    add_option(data, "images", help="with --masks: the images the ground truth belongs to (needed for "
               "MoNuSeg/Aperio .xml annotations)")
    add_options(data, ("vague_masks", "binary_masks"))
    add_options(parser.add_argument_group("run"), ("vague_threshold", "zone_width"))
    output = parser.add_argument_group("output")
    add_option(output, "out", help="write per_image.csv, summary.json and summary.md here",
               default_text="none, print only")
    add_option(output, "overwrite", help="replace results already in --out (default: refuse, as predict "
               "does)")
    add_option(output, "json", help="print the summary as JSON")
    parser.set_defaults(handler=run_evaluate)


def format_evaluation(evaluation: FolderEvaluation) -> str:
    """Short text report: headline table and what was missing."""
    primary = evaluation.primary
    setting = "vague areas excluded" if evaluation.vague_excluded is not None else "all pixels"
    lines = [f"images: {len(evaluation.pairs)}   GT nuclei: {primary.n_gt:,}   predicted: {primary.n_pred:,}"
             f"   ({setting})",
             f"{'metric':<9} {'mean':>7} {'± std':>7} {'pooled':>7} {'weighted':>8}"]
    for name in METRIC_NAMES:
        lines.append(f"{name:<9} {primary.mean[name]:7.4f} {primary.std[name]:7.4f} "
                     f"{primary.pooled[name]:7.4f} {primary.weighted_mean[name]:8.4f}")
    if evaluation.vague_excluded is not None:
        lines.append("all pixels: " + ", ".join(f"{name} {evaluation.all_pixels.mean[name]:.4f}"
                                                for name in ("dice", "aji", "pq")))
    if evaluation.missing_predictions:
        lines.append(f"missing predictions (scored as empty): {', '.join(evaluation.missing_predictions)}")
    if evaluation.unmatched_predictions:
        unmatched = ", ".join(evaluation.unmatched_predictions)
        lines.append(f"predictions without ground truth (ignored): {unmatched}")
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    evaluation = evaluate_folders(
        args.pred,
        gt_dir=args.masks,
        data_root=None if args.data is None else resolve_data_root(args.data),
        images_dir=args.images,
        vague_dir=args.vague_masks,
        out_dir=args.out,
        vague_threshold=args.vague_threshold,
        zone_width=args.zone_width,
        binary_masks=args.binary_masks,
        overwrite=args.overwrite,
    )
    if args.json:
        print(json.dumps(evaluation.to_json(), indent=2))
    else:
        print(format_evaluation(evaluation))
        if args.out:
            print(f"wrote per_image.csv, summary.json, summary.md to {args.out}")
    return 0
