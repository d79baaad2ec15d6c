"""Scoring a folder of predicted label maps against ground truth, and writing the report.

Predictions and GT are paired by file stem (``<stem>_labels.tif``, as `nucleisam predict` names
its label maps, counts as ``<stem>``). A GT image without a prediction is scored as an empty
prediction (every metric 0 for it) and listed; a prediction without GT is listed and ignored; a
prediction whose size differs from its GT is an error naming both files. Everything is read and
scored before anything is written, and each output file is written atomically.

Two settings are reported when any image has vague areas: **vague areas excluded** (NucEval's
rule, the NuInsSeg convention and the primary numbers) and **all pixels** (masks ignored).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucleisam.data.datasets import Sample, open_dataset
from nucleisam.data.labels import (
    LABEL_SUFFIXES,
    PREDICTED_LABELS_SUFFIX,
    PREDICTED_OVERLAY_SUFFIX,
    read_binary_mask,
    read_label_map,
)
from nucleisam.errors import NucleisamError
from nucleisam.metrics.aggregate import MetricAccumulator, MetricSummary
from nucleisam.metrics.instance import METRIC_NAMES, MSA_THRESHOLDS
from nucleisam.utils.atomic import check_outputs_free, ensure_output_dir, write_json_atomic, write_text_atomic

#: What each reported number means; written into summary.json and summary.md.
DEFINITIONS: dict[str, str] = {
    "dice": "binary foreground Dice 2|G∩P|/(|G|+|P|) (HoVer-Net get_dice_1)",
    "aji": "Aggregated Jaccard Index: each GT nucleus paired with its largest-IoU prediction (predictions "
           "may be reused); Σ paired intersections / (Σ paired unions + unpaired GT and prediction areas) "
           "(Kumar et al. 2017; HoVer-Net get_fast_aji)",
    "aji_plus": "AJI with one-to-one pairing maximising total IoU (Hungarian), IoU > 0 (HoVer-Net "
                "get_fast_aji_plus)",
    "dq": "detection quality TP/(TP + FP/2 + FN/2), matches at IoU > 0.5",
    "sq": "segmentation quality: mean IoU of the matches at IoU > 0.5",
    "pq": "panoptic quality DQ·SQ (Kirillov et al.; HoVer-Net get_fast_pq)",
    "msa": "mean segmentation accuracy: mean over IoU thresholds 0.50, 0.55, …, 0.95 of TP/(TP+FP+FN), "
           "one-to-one matches at IoU ≥ t (micro-sam / StarDist)",
    "f1": "detection F1 at IoU ≥ 0.5, one-to-one matches",
}
AGGREGATION = {
    "mean": "mean over images (each image counts once; the field's convention), ± sample std (ddof=1)",
    "pooled": "one ratio over all images: intersections/unions (AJI, AJI+), TP/FP/FN and IoUs (PQ), pixels "
              "(Dice) and TP per threshold (mSA) summed first",
    "weighted_mean": "mean over images weighted by their GT nuclei (NucEval's normalisation)",
}
CONVENTIONS = (
    "Empty maps: both empty scores 1.0, exactly one empty 0.0 (NucEval). Vague areas (NucEval): an "
    "instance with more than {threshold:g} of its area inside the vague mask is removed from its map, then "
    "vague pixels are blanked in both maps. No epsilon terms: a perfect prediction scores exactly 1."
)


#: What :func:`write_evaluation` writes into the output folder.
EVALUATION_FILES = ("per_image.csv", "summary.json", "summary.md")

@dataclass(frozen=True)
class ImagePair:
    """One GT image and what it is compared with."""

    stem: str
    gt_path: Path
    pred_path: Path | None  #: None: no prediction (scored as empty)
    vague_path: Path | None
    sample: Sample | None = None  #: set for NuInsSeg data (knows how to read its labels)

    def load_gt(self, *, binary_masks: bool = False) -> np.ndarray:
        if self.sample is not None:
            return self.sample.load_labels()
        return read_label_map(self.gt_path, binary_masks=binary_masks)


@dataclass(frozen=True)
class FolderEvaluation:
    """Result of :func:`evaluate_folders`."""

    pred_dir: Path
    gt_source: str
    pairs: list[ImagePair]
    missing_predictions: list[str]  #: stems scored as empty
    vague_pixels: dict[str, int]  #: vague-area pixels per image (0 without a mask)
    unmatched_predictions: list[str]  #: prediction files without GT (ignored)
    vague_excluded: MetricSummary | None  #: None when no image has vague areas
    all_pixels: MetricSummary
    vague_threshold: float
    zone_width: int

    @property
    def primary(self) -> MetricSummary:
        """The headline numbers: vague areas excluded when masks exist, else all pixels."""
        return self.vague_excluded if self.vague_excluded is not None else self.all_pixels

    def settings(self) -> dict[str, Any]:
        return {
            "match_iou": 0.5,
            "msa_thresholds": list(MSA_THRESHOLDS),
            "ambiguous_threshold": self.vague_threshold,  # summary.json keeps its 0.1 key
            "zone_width": self.zone_width,
        }

    def to_json(self) -> dict[str, Any]:
        def aggregates(summary: MetricSummary) -> dict[str, Any]:
            data = summary.to_dict()
            data.pop("per_image")
            return data

        return {
            "predictions": str(self.pred_dir),
            "ground_truth": self.gt_source,
            "n_images": len(self.pairs),
            "n_with_vague_area": sum(count > 0 for count in self.vague_pixels.values()),
            "missing_predictions": self.missing_predictions,
            "unmatched_predictions": self.unmatched_predictions,
            "settings": self.settings(),
            "vague_excluded": None if self.vague_excluded is None else aggregates(self.vague_excluded),
            "all_pixels": aggregates(self.all_pixels),
            "definitions": DEFINITIONS,
            "aggregation": AGGREGATION,
            "conventions": CONVENTIONS.format(threshold=self.vague_threshold),
        }

    def per_image_rows(self) -> list[dict[str, Any]]:
        """One row per image: the primary metrics, then the all-pixel ones when they differ."""
        rows = []
        secondary = self.all_pixels if self.vague_excluded is not None else None
        for index, pair in enumerate(self.pairs):
            row: dict[str, Any] = {
                "stem": pair.stem,
                "prediction": "" if pair.pred_path is None else pair.pred_path.name,
                "vague_pixels": self.vague_pixels[pair.stem],
            }
            row.update({k: v for k, v in self.primary.per_image[index].items() if k != "key"})
            if secondary is not None:
                row.update({f"all_pixels_{name}": secondary.per_image[index][name]
                            for name in (*METRIC_NAMES, "n_gt", "n_pred")})
            rows.append(row)
        return rows

    def markdown(self) -> str:
        lines = [
            "# Evaluation",
            "",
            f"- predictions: `{self.pred_dir}`",
            f"- ground truth: `{self.gt_source}`",
            f"- images: {len(self.pairs)} ({sum(n > 0 for n in self.vague_pixels.values())} with vague "
            f"areas); GT nuclei {self.primary.n_gt:,}, predicted {self.primary.n_pred:,}",
        ]
        if self.missing_predictions:
            lines.append(f"- **missing predictions, scored as empty**: {', '.join(self.missing_predictions)}")
        if self.unmatched_predictions:
            unmatched = ", ".join(self.unmatched_predictions)
            lines.append(f"- predictions without ground truth (ignored): {unmatched}")
        if self.zone_width:
            lines.append(f"- boundary zone: pixels within {self.zone_width} px of a GT border are ignored")
        sections = [("All pixels", self.all_pixels)]
        if self.vague_excluded is not None:
            sections.insert(0, ("Vague areas excluded (NucEval rule; primary)", self.vague_excluded))
        for title, summary in sections:
            lines += ["", f"## {title}", "",
                      "| metric | mean ± std (per image) | pooled | nuclei-weighted mean |",
                      "|---|---|---|---|"]
            for name in METRIC_NAMES:
                lines.append(f"| {name} | {summary.mean[name]:.4f} ± {summary.std[name]:.4f} | "
                             f"{summary.pooled[name]:.4f} | {summary.weighted_mean[name]:.4f} |")
        lines += ["", "## Definitions", ""]
        lines += [f"- **{name}**: {text}" for name, text in DEFINITIONS.items()]
        lines += [f"- **{name}**: {text}" for name, text in AGGREGATION.items()]
        lines += ["", CONVENTIONS.format(threshold=self.vague_threshold), ""]
        return "\n".join(lines)


def _check_dir(path: str | os.PathLike[str], option: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise NucleisamError(f"{folder} ({option}) is not a folder (or does not exist).")
    return folder


def _label_files(folder: Path, option: str, *, predictions: bool = False) -> dict[str, Path]:
    """Stem → label file (TIFF/PNG/NPY) in ``folder``; two files with one stem is an error.

    With ``predictions``, the output folder of ``nucleisam predict`` reads as it is: ``x_labels.tif``
    counts as stem ``x`` and the ``x_overlay.png`` pictures are passed over.
    """
    index: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in LABEL_SUFFIXES:
            continue
        stem = path.stem
        if predictions:
            if stem.endswith(PREDICTED_OVERLAY_SUFFIX) and path.suffix.lower() == ".png":
                continue
            stem = stem.removesuffix(PREDICTED_LABELS_SUFFIX)
        if stem in index:
            raise NucleisamError(
                f"two files for stem {stem!r} in {folder} ({option}): {index[stem].name} and "
                f"{path.name}. Keep one."
            )
        index[stem] = path
    return index


def collect_pairs(
    pred_dir: str | os.PathLike[str],
    *,
    gt_dir: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    images_dir: str | os.PathLike[str] | None = None,
    vague_dir: str | os.PathLike[str] | None = None,
    binary_masks: bool = False,
) -> tuple[list[ImagePair], list[str], str]:
    """Pair GT images with predictions by stem: (pairs, unmatched prediction files, GT description).

    Ground truth is read as the data commands read it: ``data_root`` in any layout they accept
    (NuInsSeg, images with MoNuSeg/Aperio XML beside them), or ``images_dir`` with ``gt_dir``
    (label maps or XML paired by stem), or ``gt_dir`` alone (label maps, no images needed).
    """
    if (gt_dir is None and images_dir is None) == (data_root is None):
        raise NucleisamError(
            "give exactly one ground-truth source: masks (a folder of label maps, with or without "
            "images) or data (a data set root)."
        )
    predictions = _label_files(_check_dir(pred_dir, "pred_dir"), "pred_dir", predictions=True)
    if not predictions:
        raise NucleisamError(f"no label maps (TIFF, PNG or NPY) found in {pred_dir} (pred_dir).")
    vague_files = {} if vague_dir is None else _label_files(_check_dir(vague_dir, "vague_dir"),
                                                                "vague_dir")
    pairs: list[ImagePair] = []
    if data_root is not None or images_dir is not None:
        dataset = open_dataset(data_root, images_dir, gt_dir, binary_masks=binary_masks)
        for sample in dataset.samples:
            vague = vague_files.get(sample.stem) if vague_dir is not None else sample.vague_path
            prediction = predictions.get(sample.stem)
            pairs.append(ImagePair(sample.stem, sample.labels_path, prediction, vague, sample))
        source = str(data_root if data_root is not None else gt_dir or images_dir)
    else:
        gt_files = _label_files(_check_dir(gt_dir, "gt_dir"), "gt_dir")
        if not gt_files:
            raise NucleisamError(f"no label maps (TIFF, PNG or NPY) found in {gt_dir} (gt_dir).")
        for stem, path in gt_files.items():
            pairs.append(ImagePair(stem, path, predictions.get(stem), vague_files.get(stem)))
        source = str(gt_dir)
    gt_stems = {pair.stem for pair in pairs}
    unmatched = [path.name for stem, path in predictions.items() if stem not in gt_stems]
    if not any(pair.pred_path is not None for pair in pairs):
        raise NucleisamError(
            f"no prediction in {pred_dir} (pred_dir) has the stem of a ground-truth image in {source}; "
            "predictions are paired with ground truth by file name without extension."
        )
    return pairs, unmatched, source


def evaluate_folders(
    pred_dir: str | os.PathLike[str],
    *,
    gt_dir: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    images_dir: str | os.PathLike[str] | None = None,
    vague_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    vague_threshold: float = 0.25,
    zone_width: int = 0,
    binary_masks: bool = False,
    overwrite: bool = False,
) -> FolderEvaluation:
    """Score every prediction in ``pred_dir`` against ``gt_dir`` (label maps) or a NuInsSeg root.

    ``binary_masks=True`` accepts binary prediction (and ``gt_dir``) masks and splits them into
    connected components (touching nuclei then count as one). With ``out_dir``, writes
    ``per_image.csv``, ``summary.json`` and ``summary.md`` there (see :func:`write_evaluation`);
    earlier results there are refused before anything is read unless ``overwrite``.
    """
    if out_dir is not None:
        if Path(out_dir).exists() and not Path(out_dir).is_dir():
            raise NucleisamError(f"output path {out_dir} (out_dir) exists and is not a folder.")
        check_outputs_free([Path(out_dir) / name for name in EVALUATION_FILES], overwrite=overwrite)
    pairs, unmatched, source = collect_pairs(pred_dir, gt_dir=gt_dir, data_root=data_root,
                                             images_dir=images_dir, vague_dir=vague_dir,
                                             binary_masks=binary_masks)
    all_pixels = MetricAccumulator(vague_threshold=vague_threshold, zone_width=zone_width)
    vague_excluded = MetricAccumulator(vague_threshold=vague_threshold, zone_width=zone_width)
    vague_pixels: dict[str, int] = {}
    for pair in pairs:
        gt = pair.load_gt(binary_masks=binary_masks)
        if pair.pred_path is None:
            pred = np.zeros(gt.shape, np.int32)
        else:
            pred = read_label_map(pair.pred_path, binary_masks=binary_masks)
            if pred.shape != gt.shape:
                raise NucleisamError(
                    f"prediction {pair.pred_path} is {pred.shape[0]}x{pred.shape[1]} but its ground truth "
                    f"{pair.gt_path} is {gt.shape[0]}x{gt.shape[1]}; predictions must be at the native size."
                )
        vague = None
        if pair.vague_path is not None:
            vague = read_binary_mask(pair.vague_path)
            if vague.shape != gt.shape:
                raise NucleisamError(
                    f"vague-area mask {pair.vague_path} is {vague.shape[0]}x{vague.shape[1]} but its "
                    f"ground truth {pair.gt_path} is {gt.shape[0]}x{gt.shape[1]}."
                )
        vague_pixels[pair.stem] = 0 if vague is None else int(vague.sum())
        all_pixels.update(gt, pred, key=pair.stem)
        vague_excluded.update(gt, pred, vague, key=pair.stem)
    any_vague = any(count > 0 for count in vague_pixels.values())
    evaluation = FolderEvaluation(
        pred_dir=Path(pred_dir),
        gt_source=source,
        pairs=pairs,
        missing_predictions=[pair.stem for pair in pairs if pair.pred_path is None],
        vague_pixels=vague_pixels,
        unmatched_predictions=unmatched,
        vague_excluded=vague_excluded.compute() if any_vague else None,
        all_pixels=all_pixels.compute(),
        vague_threshold=vague_threshold,
        zone_width=zone_width,
    )
    if out_dir is not None:
        write_evaluation(evaluation, out_dir)
    return evaluation


def write_evaluation(evaluation: FolderEvaluation, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``per_image.csv``, ``summary.json`` and ``summary.md`` (each atomically)."""
    folder = ensure_output_dir(out_dir, option="out_dir")
    rows = evaluation.per_image_rows()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    paths = [folder / name for name in EVALUATION_FILES]
    write_text_atomic(paths[0], buffer.getvalue())
    write_json_atomic(paths[1], evaluation.to_json())
    write_text_atomic(paths[2], evaluation.markdown())
    return paths
