"""Instance-segmentation metrics with the field's reference semantics (DESIGN.md §5).

Definitions (per image, on instance label maps; ids need not be contiguous):

* **Dice** — binary foreground Dice, ``2|G ∩ P| / (|G| + |P|)`` (HoVer-Net ``get_dice_1``).
* **AJI** — Kumar et al., as HoVer-Net ``get_fast_aji``: every GT instance is paired with the
  prediction of largest IoU among those it overlaps (a prediction may be paired with several GT
  instances; equal IoUs go to the lowest prediction id). AJI = Σ paired intersections /
  (Σ paired unions + areas of unpaired GT + areas of predictions paired with no GT).
* **AJI+** — as HoVer-Net ``get_fast_aji_plus``: the same ratio over a one-to-one pairing that
  maximises the total IoU (Hungarian, :func:`scipy.optimize.linear_sum_assignment`), keeping only
  pairs with IoU > 0. As there, the IoU maximised is ``inter / (union + 1e-6)``: among pairings of
  equal total IoU this one prefers larger unions, which changes AJI+ (one GT over two predictions
  of IoU 0.5 each pairs with the larger one). The epsilon only chooses the pairing; AJI+ itself is
  computed exactly. The assignment is solved per connected group of overlapping instances (a group
  with one instance on one side takes its heaviest pair, lowest id on ties; larger groups take
  scipy's solution on the group's matrix in id order), so pairings that still tie exactly may
  differ from a global solve: they then pair instances of identical areas and overlaps.
* **PQ = DQ · SQ** (Kirillov et al., as HoVer-Net ``get_fast_pq``): pairs with IoU > ``match_iou``
  (0.5; unique by construction); DQ = TP / (TP + ½FP + ½FN), SQ = mean IoU of the pairs (0 when
  there are none). Below 0.5, pairs come from the AJI+ pairing filtered by IoU > ``match_iou``.
* **mSA** (micro-sam / StarDist "accuracy"): mean over IoU thresholds t = 0.50, 0.55, …, 0.95
  (exactly k/20) of TP / (TP + FP + FN), where TP is the largest number of one-to-one pairs with
  IoU ≥ t. **F1** = 2 TP / (n_gt + n_pred) at t = 0.5 with the same matching; it equals DQ except
  when a pair has IoU exactly 0.5.

No epsilon terms: a perfect prediction scores exactly 1.0. NucEval's conventions apply to empty
maps (both empty → every metric 1.0; exactly one empty → 0.0), to vague regions and to
boundary zones (see :func:`evaluate_instances`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from nucleisam.errors import NucleisamError
from nucleisam.metrics.table import OverlapTable, as_label_map, overlap_table, remove_vague

#: IoU thresholds of the mean segmentation accuracy: 0.50, 0.55, ..., 0.95 (k / 20 exactly).
MSA_THRESHOLDS: tuple[float, ...] = tuple(k / 20 for k in range(10, 20))
#: The metrics every evaluation reports, in report order.
METRIC_NAMES: tuple[str, ...] = ("dice", "aji", "aji_plus", "dq", "sq", "pq", "msa", "f1")

_EMPTY = np.zeros(0, np.intp)


# --------------------------------------------------------------------------------------------
# Pairings on an overlap table
# --------------------------------------------------------------------------------------------


def _edge_components(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Connected-component label of every edge of the bipartite overlap graph."""
    graph = coo_matrix((np.ones(rows.size, np.int8), (rows, cols + n_rows)), shape=(n_rows + n_cols,) * 2)
    _, node_component = connected_components(graph, directed=False)
    return node_component[rows]


def _first_per_group(group: np.ndarray, *tie_keys: np.ndarray) -> np.ndarray:
    """Index of the first edge of each group after sorting by ``tie_keys`` (first key first)."""
    order = np.lexsort((*reversed(tie_keys), group))
    sorted_group = group[order]
    return order[np.r_[True, sorted_group[1:] != sorted_group[:-1]]]


def _max_iou_edges(table: OverlapTable) -> np.ndarray:
    """AJI pairing as indices into the table's pairs: each GT with its largest-IoU prediction.

    Exact IoU ties go to the prediction with the larger union, then the lowest id: HoVer-Net's
    ``get_fast_aji`` takes the argmax of ``inter / (union + 1e-6)``, whose epsilon favours the
    larger union among equal ratios (and whose argmax takes the first of equal values).
    """
    if table.intersection.size == 0:
        return _EMPTY
    return np.sort(_first_per_group(table.gt_index, -table.iou, -table.union, table.pred_index))


def _one_to_one(
    rows: np.ndarray, cols: np.ndarray, weight: np.ndarray, n_rows: int, n_cols: int
) -> np.ndarray:
    """Indices of a one-to-one set of edges of maximal total ``weight`` (> 0), ascending.

    Edges must be sorted by (row, col). The problem splits into connected groups: an edge that
    touches nothing else is taken as is, a group with one node on one side takes its heaviest
    edge, and only the rest goes through the Hungarian algorithm, one small matrix per group.
    """
    if rows.size == 0:
        return _EMPTY
    row_degree = np.bincount(rows, minlength=n_rows)
    col_degree = np.bincount(cols, minlength=n_cols)
    alone = (row_degree[rows] == 1) & (col_degree[cols] == 1)
    picked = [np.flatnonzero(alone)]
    rest = np.flatnonzero(~alone)
    if rest.size:
        rest_rows, rest_cols = rows[rest], cols[rest]
        component = _edge_components(rest_rows, rest_cols, n_rows, n_cols)
        n_groups = int(component.max()) + 1
        # Distinct rows / columns per group (every node lies in exactly one group); rest_rows is
        # sorted, rest_cols is sorted here first.
        rows_in = np.bincount(component[np.r_[True, rest_rows[1:] != rest_rows[:-1]]], minlength=n_groups)
        by_col = np.argsort(rest_cols, kind="stable")
        sorted_cols = rest_cols[by_col]
        cols_in = np.bincount(
            component[by_col][np.r_[True, sorted_cols[1:] != sorted_cols[:-1]]], minlength=n_groups
        )
        star = (rows_in[component] == 1) | (cols_in[component] == 1)
        if star.any():
            edges = rest[star]
            # Heaviest edge of the group; on ties the lowest (row, col).
            picked.append(edges[_first_per_group(component[star], -weight[edges], rows[edges], cols[edges])])
        general = rest[~star]
        if general.size:
            picked.extend(_hungarian_per_group(rows[general], cols[general], weight[general],
                                               component[~star], general))
    return np.sort(np.concatenate(picked))


def _local_rank(group: np.ndarray, node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each edge's node among the distinct nodes of its group, and nodes per group."""
    order = np.lexsort((node, group))
    g, n = group[order], node[order]
    group_start = np.r_[True, g[1:] != g[:-1]]
    new_node = group_start | np.r_[True, n[1:] != n[:-1]]
    running = np.cumsum(new_node) - 1
    rank = np.empty(node.size, np.intp)
    rank[order] = running - running[group_start][np.cumsum(group_start) - 1]
    return rank, np.add.reduceat(new_node, np.flatnonzero(group_start))


def _hungarian_per_group(
    rows: np.ndarray, cols: np.ndarray, weight: np.ndarray, group: np.ndarray, edge_ids: np.ndarray
) -> list[np.ndarray]:
    """Solve the assignment of each group on its own small matrix (rows, cols in id order)."""
    local_row, rows_per_group = _local_rank(group, rows)
    local_col, cols_per_group = _local_rank(group, cols)
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1], True])
    picked = []
    for index, (start, stop) in enumerate(itertools.pairwise(bounds)):
        edges = order[start:stop]
        shape = (rows_per_group[index], cols_per_group[index])
        matrix = np.zeros(shape)
        matrix[local_row[edges], local_col[edges]] = weight[edges]
        edge_at = np.full(shape, -1, np.intp)
        edge_at[local_row[edges], local_col[edges]] = edge_ids[edges]
        a, b = linear_sum_assignment(matrix, maximize=True)
        picked.append(edge_at[a, b][matrix[a, b] > 0])
    return picked


#: HoVer-Net's ``get_fast_aji_plus`` maximises ``inter / (union + 1e-6)``; the term breaks ties.
_AJI_PLUS_UNION_EPSILON = 1.0e-6


def _hungarian_edges(table: OverlapTable, weight: np.ndarray) -> np.ndarray:
    return _one_to_one(table.gt_index, table.pred_index, weight, table.n_gt, table.n_pred)


def _aji_plus_edges(table: OverlapTable) -> np.ndarray:
    return _hungarian_edges(table, table.intersection / (table.union + _AJI_PLUS_UNION_EPSILON))


def max_iou_pairs(table: OverlapTable) -> tuple[np.ndarray, np.ndarray]:
    """AJI pairing: (gt index, prediction index) of each GT with its largest-IoU prediction."""
    edges = _max_iou_edges(table)
    return table.gt_index[edges], table.pred_index[edges]


def hungarian_pairs(table: OverlapTable) -> tuple[np.ndarray, np.ndarray]:
    """AJI+ pairing: one-to-one (gt index, prediction index) pairs of maximal total IoU, IoU > 0
    (HoVer-Net's tie-break: the IoU maximised is ``inter / (union + 1e-6)``)."""
    edges = _aji_plus_edges(table)
    return table.gt_index[edges], table.pred_index[edges]


def _matching_size(table: OverlapTable, candidate: np.ndarray) -> int:
    """Largest number of one-to-one pairs among the table's pairs flagged ``candidate``."""
    rows, cols = table.gt_index[candidate], table.pred_index[candidate]
    if np.bincount(rows).max(initial=0) <= 1 and np.bincount(cols).max(initial=0) <= 1:
        return int(rows.size)
    return int(_one_to_one(rows, cols, np.ones(rows.size), table.n_gt, table.n_pred).size)


# --------------------------------------------------------------------------------------------
# Additive per-image counts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceCounts:
    """The additive quantities behind every metric of one image (or, summed, of a dataset).

    Each metric is a ratio of these sums, so the pooled value over several images is the same
    formula applied to the summed counts (``a + b``).
    """

    n_gt: int
    n_pred: int
    gt_pixels: int
    pred_pixels: int
    overlap_pixels: int
    aji_intersection: int
    aji_union: int
    aji_plus_intersection: int
    aji_plus_union: int
    tp: int
    fp: int
    fn: int
    iou_sum: float
    msa_tp: tuple[int, ...]

    def __add__(self, other: InstanceCounts) -> InstanceCounts:
        values = {}
        for field in fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            values[field.name] = (
                tuple(a + b for a, b in zip(mine, theirs, strict=True)) if field.name == "msa_tp"
                else mine + theirs
            )
        return InstanceCounts(**values)

    def row(self) -> dict[str, float | int]:
        """The metrics plus ``n_gt, n_pred, tp, fp, fn``: one row of a per-image table."""
        return {**self.metrics(), "n_gt": self.n_gt, "n_pred": self.n_pred, "tp": self.tp, "fp": self.fp,
                "fn": self.fn}

    def metrics(self) -> dict[str, float]:
        """The metric values, with NucEval's conventions for empty maps."""
        if self.n_gt == 0 or self.n_pred == 0:
            value = 1.0 if self.n_gt == self.n_pred else 0.0
            return dict.fromkeys(METRIC_NAMES, value)
        dq = self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn)
        sq = self.iou_sum / self.tp if self.tp else 0.0
        n_total = self.n_gt + self.n_pred
        return {
            "dice": 2 * self.overlap_pixels / (self.gt_pixels + self.pred_pixels),
            "aji": self.aji_intersection / self.aji_union,
            "aji_plus": self.aji_plus_intersection / self.aji_plus_union,
            "dq": dq,
            "sq": sq,
            "pq": dq * sq,
            "msa": math.fsum(tp / (n_total - tp) for tp in self.msa_tp) / len(self.msa_tp),
            "f1": 2 * self.msa_tp[0] / n_total,
        }


def _aji_sums(table: OverlapTable, edges: np.ndarray) -> tuple[int, int]:
    """(Σ paired intersections, Σ paired unions + areas of unpaired GT and predictions)."""
    rows, cols = table.gt_index[edges], table.pred_index[edges]
    intersection = table.intersection[edges]
    union = table.gt_area[rows] + table.pred_area[cols] - intersection
    unpaired_gt = np.ones(table.n_gt, bool)
    unpaired_gt[rows] = False
    unpaired_pred = np.ones(table.n_pred, bool)
    unpaired_pred[cols] = False
    unpaired_area = int(table.gt_area[unpaired_gt].sum()) + int(table.pred_area[unpaired_pred].sum())
    return int(intersection.sum()), int(union.sum()) + unpaired_area


def _pq_edges(table: OverlapTable, match_iou: float) -> np.ndarray:
    """Indices of the PQ matches among the table's pairs."""
    iou = table.iou
    if match_iou >= 0.5:
        return np.flatnonzero(iou > match_iou)
    edges = _hungarian_edges(table, iou)  # HoVer-Net's get_fast_pq: plain IoU, no epsilon
    return edges[iou[edges] > match_iou]


def counts_from_table(table: OverlapTable, *, match_iou: float = 0.5) -> InstanceCounts:
    """All additive counts of one image from its overlap table."""
    iou = table.iou
    aji_i, aji_u = _aji_sums(table, _max_iou_edges(table))
    plus_i, plus_u = _aji_sums(table, _aji_plus_edges(table))
    matched = _pq_edges(table, match_iou)
    tp = int(matched.size)
    # IoU >= k/20 decided on exact integers: 20 * intersection >= k * union.
    twenty_i = 20 * table.intersection
    union = table.union
    msa_tp = tuple(
        _matching_size(table, twenty_i >= round(t * 20) * union) for t in MSA_THRESHOLDS
    )
    return InstanceCounts(
        n_gt=table.n_gt,
        n_pred=table.n_pred,
        gt_pixels=int(table.gt_area.sum()),
        pred_pixels=int(table.pred_area.sum()),
        overlap_pixels=int(table.intersection.sum()),
        aji_intersection=aji_i,
        aji_union=aji_u,
        aji_plus_intersection=plus_i,
        aji_plus_union=plus_u,
        tp=tp,
        fp=table.n_pred - tp,
        fn=table.n_gt - tp,
        iou_sum=math.fsum(iou[matched]),
        msa_tp=msa_tp,
    )


# --------------------------------------------------------------------------------------------
# Boundary zone (NucEval's "ring")
# --------------------------------------------------------------------------------------------


def zone_footprint(width: int) -> np.ndarray:
    """The (2w+1)² elliptical footprint NucEval's ring uses (OpenCV ``MORPH_ELLIPSE``).

    Row ``dy`` spans ``|dx| <= round(sqrt(w² - dy²))``; for w = 1 this is the 4-connected cross,
    for w = 2 the 5×5 square without its four corner pairs.
    """
    offsets = np.arange(-width, width + 1)
    half_width = np.rint(np.sqrt(width * width - offsets * offsets))
    return np.abs(offsets)[None, :] <= half_width[:, None]


def boundary_zone(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of a GT instance border, on either side (bool (H, W)).

    NucEval's boundary-uncertainty ring: for each instance, its dilation minus its erosion by
    :func:`zone_footprint`, united over instances. An instance's erosion treats pixels beyond the
    image edge as its own (the tile edge is not an annotated border) and treats touching instances
    as outside, so the line between two touching nuclei lies in the zone.
    """
    labels = as_label_map(labels, name="ground truth")
    if width <= 0:
        return np.zeros(labels.shape, bool)
    footprint = zone_footprint(width)
    foreground = labels > 0
    dilated = ndimage.binary_dilation(foreground, structure=footprint)
    core = foreground.copy()
    height, width_px = labels.shape
    for dy, dx in zip(*np.nonzero(footprint), strict=True):
        dy, dx = int(dy) - width, int(dx) - width
        if dy == 0 and dx == 0:
            continue
        # Compare each pixel with its neighbour at (dy, dx); neighbours beyond the edge match.
        ys = slice(max(0, -dy), height - max(0, dy))
        xs = slice(max(0, -dx), width_px - max(0, dx))
        shifted_ys = slice(ys.start + dy, ys.stop + dy)
        shifted_xs = slice(xs.start + dx, xs.stop + dx)
        core[ys, xs] &= labels[ys, xs] == labels[shifted_ys, shifted_xs]
    return dilated & ~core


# --------------------------------------------------------------------------------------------
# Public metric functions
# --------------------------------------------------------------------------------------------


def _check_fraction(value: float, name: str, *, low: float = 0.0, high: float = 1.0) -> float:
    if not (low <= float(value) <= high):
        raise NucleisamError(f"{name} must lie in [{low}, {high}], got {value}.")
    return float(value)


def image_counts(
    gt: np.ndarray,
    pred: np.ndarray,
    vague: np.ndarray | None = None,
    *,
    vague_threshold: float = 0.25,
    zone_width: int = 0,
    match_iou: float = 0.5,
) -> InstanceCounts:
    """The additive :class:`InstanceCounts` of one image (see :func:`evaluate_instances`)."""
    vague_threshold = _check_fraction(vague_threshold, "vague_threshold")
    match_iou = _check_fraction(match_iou, "match_iou")
    if int(zone_width) != zone_width or zone_width < 0:
        raise NucleisamError(f"zone_width must be a whole number of pixels >= 0, got {zone_width}.")
    if zone_width == 0:
        table = overlap_table(gt, pred, vague=vague, vague_threshold=vague_threshold)
    else:
        gt = as_label_map(gt, name="ground truth")
        pred = as_label_map(pred, name="prediction")
        if vague is not None:
            # The zone is drawn around the GT that survives the vague rule (NucEval's order).
            gt = remove_vague(gt, vague, threshold=vague_threshold)
            pred = remove_vague(pred, vague, threshold=vague_threshold)
        zone = boundary_zone(gt, int(zone_width))
        table = overlap_table(gt, pred, vague=zone, vague_threshold=None)
    return counts_from_table(table, match_iou=match_iou)


def evaluate_instances(
    gt: np.ndarray,
    pred: np.ndarray,
    vague: np.ndarray | None = None,
    vague_threshold: float = 0.25,
    zone_width: int = 0,
) -> dict[str, float | int]:
    """All metrics of one image: Dice, AJI, AJI+, DQ, SQ, PQ, mSA, F1 and the counts behind PQ.

    Parameters
    ----------
    gt, pred : (H, W) integer arrays
        Instance label maps (0 = background; any non-negative ids).
    vague : (H, W) array or None
        Vague-area mask (non-zero = vague). NucEval's rule: an instance, GT or predicted, with
        more than ``vague_threshold`` of its area inside it is removed from its map (exactly
        25 % stays); then the vague pixels are blanked in both maps.
    zone_width : int
        NucEval's boundary-uncertainty ring (0 = off): pixels within ``zone_width`` of a GT border,
        see :func:`boundary_zone`, are blanked in both maps after the vague rule; instances
        left without pixels disappear.

    Returns
    -------
    dict
        ``dice, aji, aji_plus, dq, sq, pq, msa, f1`` (floats) and ``n_gt, n_pred, tp, fp, fn``
        (ints: instances after the vague rule and zone; PQ's matches at IoU > 0.5).
    """
    counts = image_counts(
        gt, pred, vague, vague_threshold=vague_threshold, zone_width=zone_width
    )
    return counts.row()


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Binary foreground Dice of two label maps (both empty: 1.0)."""
    return image_counts(gt, pred).metrics()["dice"]


def aji(gt: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index (HoVer-Net ``get_fast_aji`` semantics, no epsilon)."""
    return image_counts(gt, pred).metrics()["aji"]


def aji_plus(gt: np.ndarray, pred: np.ndarray) -> float:
    """AJI with one-to-one Hungarian pairing (HoVer-Net ``get_fast_aji_plus`` semantics)."""
    return image_counts(gt, pred).metrics()["aji_plus"]


def panoptic_quality(
    gt: np.ndarray, pred: np.ndarray, *, match_iou: float = 0.5
) -> tuple[float, float, float]:
    """(DQ, SQ, PQ) with matches at IoU > ``match_iou`` (HoVer-Net ``get_fast_pq`` semantics)."""
    values = image_counts(gt, pred, match_iou=match_iou).metrics()
    return values["dq"], values["sq"], values["pq"]


def mean_segmentation_accuracy(gt: np.ndarray, pred: np.ndarray) -> float:
    """mSA: mean over IoU thresholds 0.50:0.05:0.95 of TP / (TP + FP + FN)."""
    return image_counts(gt, pred).metrics()["msa"]
