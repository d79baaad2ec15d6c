"""Slow, per-instance reference metrics written straight from the published definitions.

Every instance is a full-image boolean mask and every quantity is a plain sum over pixels, the
way HoVer-Net's ``get_dice_1`` / ``get_fast_aji`` / ``get_fast_aji_plus`` / ``get_fast_pq``
describe them (without their epsilon terms) and NucEval describes its vague-region and
boundary-ring rules. Nothing here shares code with ``nucleisam.metrics``; the tests check the fast
implementation against these functions. Used by the tests and by ``benchmarks/metrics.py``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

THRESHOLDS = [k / 20 for k in range(10, 20)]


def instance_masks(labels: np.ndarray) -> list[np.ndarray]:
    """One boolean mask per non-zero id, in ascending id order."""
    return [labels == i for i in np.unique(labels) if i != 0]


def remove_vague(labels: np.ndarray, vague: np.ndarray, threshold: float) -> np.ndarray:
    """Drop instances with more than ``threshold`` of their area in the mask, then blank the mask."""
    vague = vague != 0
    out = labels.copy()
    for i in np.unique(labels):
        if i == 0:
            continue
        mask = labels == i
        if (mask & vague).sum() / mask.sum() > threshold:
            out[mask] = 0
    out[vague] = 0
    return out


def ellipse(width: int) -> np.ndarray:
    """OpenCV's MORPH_ELLIPSE structuring element of size (2w+1, 2w+1)."""
    size = 2 * width + 1
    element = np.zeros((size, size), bool)
    for row in range(size):
        dy = row - width
        reach = round(math.sqrt(width * width - dy * dy))
        element[row, width - reach: width + reach + 1] = True
    return element


def boundary_ring(labels: np.ndarray, width: int) -> np.ndarray:
    """Union over GT instances of (dilation - erosion); erosion keeps the image edge as inside."""
    ring = np.zeros(labels.shape, bool)
    element = ellipse(width)
    for mask in instance_masks(labels):
        dilated = ndimage.binary_dilation(mask, structure=element)
        eroded = ndimage.binary_erosion(mask, structure=element, border_value=1)
        ring |= dilated & ~eroded
    return ring


def pair_tables(gt: np.ndarray, pred: np.ndarray) -> tuple[list, list, np.ndarray, np.ndarray]:
    """Instance masks and the dense intersection / union matrices (zero where no overlap)."""
    gt_masks, pred_masks = instance_masks(gt), instance_masks(pred)
    pred_ids = [i for i in np.unique(pred) if i != 0]
    inter = np.zeros((len(gt_masks), len(pred_masks)))
    union = np.zeros((len(gt_masks), len(pred_masks)))
    for g, gmask in enumerate(gt_masks):
        for pid in np.unique(pred[gmask]):
            if pid == 0:
                continue
            p = pred_ids.index(pid)
            inter[g, p] = np.logical_and(gmask, pred_masks[p]).sum()
            union[g, p] = np.logical_or(gmask, pred_masks[p]).sum()
    return gt_masks, pred_masks, inter, union


def _aji_from_pairs(gt_masks, pred_masks, inter, union, pairs) -> float:
    total_inter = sum(inter[g, p] for g, p in pairs)
    total_union = sum(union[g, p] for g, p in pairs)
    paired_gt = {g for g, _ in pairs}
    paired_pred = {p for _, p in pairs}
    total_union += sum(m.sum() for g, m in enumerate(gt_masks) if g not in paired_gt)
    total_union += sum(m.sum() for p, m in enumerate(pred_masks) if p not in paired_pred)
    return total_inter / total_union


def aji_plus_from_pairs(gt: np.ndarray, pred: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    """AJI formula for a given list of (gt index, pred index) pairs."""
    gt_masks, pred_masks, inter, union = pair_tables(gt, pred)
    return _aji_from_pairs(gt_masks, pred_masks, inter, union, pairs)


def reference_metrics(
    gt: np.ndarray,
    pred: np.ndarray,
    vague: np.ndarray | None = None,
    vague_threshold: float = 0.25,
    zone_width: int = 0,
    match_iou: float = 0.5,
) -> dict:
    """All metrics of one image, slowly. Also returns the AJI+ pairs and their total IoU."""
    gt = np.asarray(gt).astype(np.int64)
    pred = np.asarray(pred).astype(np.int64)
    if vague is not None:
        gt = remove_vague(gt, vague, vague_threshold)
        pred = remove_vague(pred, vague, vague_threshold)
    if zone_width > 0:
        ring = boundary_ring(gt, zone_width)
        gt[ring] = 0
        pred[ring] = 0

    gt_masks, pred_masks, inter, union = pair_tables(gt, pred)
    n_gt, n_pred = len(gt_masks), len(pred_masks)
    out = {"n_gt": n_gt, "n_pred": n_pred, "aji_plus_pairs": [], "aji_plus_total_iou": 0.0}
    names = ["dice", "aji", "aji_plus", "dq", "sq", "pq", "msa", "f1"]
    if n_gt == 0 or n_pred == 0:
        value = 1.0 if n_gt == n_pred else 0.0
        out.update(dict.fromkeys(names, value))
        out.update(tp=0, fp=n_pred, fn=n_gt)
        return out
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

    gt_fg, pred_fg = gt > 0, pred > 0
    out["dice"] = 2 * np.logical_and(gt_fg, pred_fg).sum() / (gt_fg.sum() + pred_fg.sum())

    # AJI: every GT with its best-IoU prediction, if it overlaps any, chosen as HoVer-Net's
    # get_fast_aji chooses: argmax of inter / (union + 1e-6) (equal ratios: the larger union).
    pairs = []
    hovernet_iou = inter / (union + 1.0e-6)
    for g in range(n_gt):
        if iou[g].max() > 0:
            pairs.append((g, int(np.argmax(hovernet_iou[g]))))
    out["aji"] = _aji_from_pairs(gt_masks, pred_masks, inter, union, pairs)

    # AJI+: get_fast_aji_plus solves the assignment on the same epsilon ratio.
    rows, cols = linear_sum_assignment(hovernet_iou, maximize=True)
    plus_pairs = [(int(g), int(p)) for g, p in zip(rows, cols, strict=True) if iou[g, p] > 0]
    out["aji_plus"] = _aji_from_pairs(gt_masks, pred_masks, inter, union, plus_pairs)
    out["aji_plus_pairs"] = plus_pairs
    out["aji_plus_total_iou"] = float(sum(iou[g, p] for g, p in plus_pairs))

    if match_iou >= 0.5:
        matched = [(g, p) for g in range(n_gt) for p in range(n_pred) if iou[g, p] > match_iou]
    else:  # get_fast_pq below 0.5: its own assignment, on plain IoU
        rows, cols = linear_sum_assignment(iou, maximize=True)
        matched = [(int(g), int(p)) for g, p in zip(rows, cols, strict=True) if iou[g, p] > match_iou]
    tp = len(matched)
    fp, fn = n_pred - tp, n_gt - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = sum(iou[g, p] for g, p in matched) / tp if tp else 0.0
    out.update(dq=dq, sq=sq, pq=dq * sq, tp=tp, fp=fp, fn=fn)

    accuracies = []
    for t in THRESHOLDS:
        hit = (iou >= t).astype(float)
        r, c = linear_sum_assignment(hit, maximize=True)
        tp_t = int(hit[r, c].sum())
        accuracies.append(tp_t / (n_gt + n_pred - tp_t))
        if t == 0.5:
            out["f1"] = 2 * tp_t / (n_gt + n_pred)
    out["msa"] = sum(accuracies) / len(accuracies)
    return out
