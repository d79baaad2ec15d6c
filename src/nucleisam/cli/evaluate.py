"""`nucleisam evaluate`: score a folder of predicted label maps against ground truth."""

from __future__ import annotations

import argparse
import json

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
    parser.add_argument("--pred", required=True, metavar="DIR",
                        help="folder of predicted label maps (TIFF/PNG/NPY, 0 = background)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gt", metavar="DIR", help="folder of ground-truth label maps (TIFF/PNG/NPY)")
    source.add_argument("--data", metavar="ROOT",
                        help="a data set as the data commands read it: NuInsSeg root or organ folder "
                        "('nuinsseg': the downloaded copy), or images with MoNuSeg/Aperio .xml beside them")
    parser.add_argument("--images", metavar="DIR",
                        help="with --gt: the images the ground truth belongs to (needed for .xml files)")
    parser.add_argument("--ambiguous", metavar="DIR",
                        help="folder of vague-area masks by stem (default with --data: the data set's own)")
    parser.add_argument("--ambiguous-threshold", type=float, default=0.25, metavar="F",
                        help="an instance with more than this share of its area in a vague area is removed "
                        "(default 0.25, NucEval)")
    parser.add_argument("--zone-width", type=int, default=0, metavar="PX",
                        help="ignore pixels within PX of a GT nucleus border (NucEval's ring; 0 = off, "
                        "the default)")
    parser.add_argument("--binary-masks", action="store_true",
                        help="accept binary masks and split them into connected components (touching "
                        "nuclei then count as one; instance label maps are always better)")
    parser.add_argument("--out", metavar="DIR",
                        help="write per_image.csv, summary.json and summary.md here (default: print only)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace results already in --out (default: refuse, as predict does)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
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
        gt_dir=args.gt,
        data_root=None if args.data is None else resolve_data_root(args.data),
        images_dir=args.images,
        ambiguous_dir=args.ambiguous,
        out_dir=args.out,
        ambiguous_threshold=args.ambiguous_threshold,
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
