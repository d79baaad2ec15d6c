"""Instance metrics: known answers, properties, and agreement with the slow reference to 1e-6."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from scipy import ndimage

from conftest import SHARED_SPLEEN
from nucleisam.errors import NucleisamError
from nucleisam.metrics import (
    METRIC_NAMES,
    MetricAccumulator,
    aji,
    aji_plus,
    boundary_zone,
    dice,
    evaluate_instances,
    hungarian_pairs,
    mean_segmentation_accuracy,
    overlap_table,
    panoptic_quality,
    remove_vague,
    zone_footprint,
)
from nucleisam.metrics import table as table_module
from reference_metrics import aji_plus_from_pairs, boundary_ring, ellipse, reference_metrics

TOL = 1e-6


def assert_matches_reference(gt, pred, vague=None, threshold=0.25, zone_width=0, strict_plus=True):
    fast = evaluate_instances(gt, pred, vague, vague_threshold=threshold, zone_width=zone_width)
    ref = reference_metrics(gt, pred, vague, threshold, zone_width)
    for key in ("n_gt", "n_pred", "tp", "fp", "fn"):
        assert fast[key] == ref[key], key
    for name in METRIC_NAMES:
        if name == "aji_plus" and not strict_plus:
            continue
        assert fast[name] == pytest.approx(ref[name], abs=TOL), name
    if not strict_plus:
        check_aji_plus_is_an_optimal_pairing(gt, pred, vague, threshold, zone_width, fast, ref)
    return fast


def check_aji_plus_is_an_optimal_pairing(gt, pred, vague, threshold, zone_width, fast, ref):
    """Where several pairings share the maximal total IoU, AJI+ may legitimately differ between
    solvers. Then the fast pairing must be one-to-one, reach the same total IoU, and its AJI must
    be what the fast code reports."""
    if fast["aji_plus"] == pytest.approx(ref["aji_plus"], abs=TOL):
        return
    gt_c, pred_c = np.asarray(gt).astype(np.int64), np.asarray(pred).astype(np.int64)
    if vague is not None:
        gt_c = remove_vague(gt_c, vague, threshold=threshold)
        pred_c = remove_vague(pred_c, vague, threshold=threshold)
    if zone_width:
        ring = boundary_zone(gt_c, zone_width)
        gt_c[ring] = 0
        pred_c[ring] = 0
    table = overlap_table(gt_c, pred_c)
    rows, cols = hungarian_pairs(table)
    assert len(set(rows.tolist())) == rows.size and len(set(cols.tolist())) == cols.size
    pair_keys = zip(table.gt_index.tolist(), table.pred_index.tolist(), strict=True)
    iou = dict(zip(pair_keys, table.iou, strict=True))
    total = sum(iou[(r, c)] for r, c in zip(rows.tolist(), cols.tolist(), strict=True))
    assert total == pytest.approx(ref["aji_plus_total_iou"], abs=1e-9)
    pairs = list(zip(rows.tolist(), cols.tolist(), strict=True))
    assert fast["aji_plus"] == pytest.approx(aji_plus_from_pairs(gt_c, pred_c, pairs), abs=TOL)


def square(shape, *boxes):
    out = np.zeros(shape, np.int32)
    for label, (y0, y1, x0, x1) in boxes:
        out[y0:y1, x0:x1] = label
    return out


# ------------------------------------------------------------------ known answers


def test_perfect_prediction_scores_exactly_one() -> None:
    gt = square((20, 20), (3, (1, 6, 1, 6)), (9, (8, 15, 8, 12)))
    result = evaluate_instances(gt, gt * 5 + 2 * (gt > 0))  # other ids, same instances
    for name in METRIC_NAMES:
        assert result[name] == 1.0, name
    assert (result["n_gt"], result["n_pred"], result["tp"], result["fp"], result["fn"]) == (2, 2, 2, 0, 0)


def test_merge_of_two_nuclei() -> None:
    gt = square((12, 12), (1, (2, 5, 2, 5)), (2, (5, 8, 5, 9)))  # 9 px and 12 px
    pred = (gt > 0).astype(np.uint8)  # one 21 px instance covering both
    result = evaluate_instances(gt, pred)
    assert result["dice"] == 1.0
    assert result["aji"] == pytest.approx(float(Fraction(9 + 12, 21 + 21)))  # both GT reuse it
    assert result["aji_plus"] == pytest.approx(float(Fraction(12, 21 + 9)))  # one pair + lone GT
    assert result["dq"] == pytest.approx(2 / 3)  # IoU 12/21 > 0.5: one TP, one FN
    assert result["sq"] == pytest.approx(12 / 21)
    assert result["msa"] == pytest.approx((0.5 + 0.5) / 10)  # 12/21 = 0.571 passes 0.50 and 0.55


def test_split_nucleus_at_iou_exactly_one_half() -> None:
    gt = square((10, 10), (1, (2, 6, 2, 8)))  # 24 px
    pred = square((10, 10), (4, (2, 6, 2, 5)), (7, (2, 6, 5, 8)))  # two halves of 12 px
    result = evaluate_instances(gt, pred)
    # Equal IoU and equal union: the tie between the halves goes to the lowest id; the other half
    # is unpaired.
    assert result["aji"] == pytest.approx(12 / (24 + 12))
    assert result["aji_plus"] == pytest.approx(12 / (24 + 12))
    # PQ needs IoU > 0.5: nothing matches. mSA and F1 use IoU >= 0.5: one match at 0.50 only.
    assert (result["dq"], result["sq"], result["pq"], result["tp"]) == (0.0, 0.0, 0.0, 0)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["msa"] == pytest.approx(0.5 / 10)


def test_aji_tie_goes_to_the_larger_union_as_in_hovernet() -> None:
    """GT 24 px; prediction 3 covers 8 of its pixels and nothing else (IoU 8/24 = 1/3); prediction
    5 covers 10 of them plus 6 outside (IoU 10/30 = 1/3). Exactly equal IoU: HoVer-Net pairs the
    GT with prediction 5 (union 30 > 24), the lowest id would have given prediction 3."""
    gt = square((12, 12), (1, (2, 6, 2, 8)))  # rows 2-5, cols 2-7: 24 px
    pred = np.zeros((12, 12), np.int32)
    pred[2:4, 2:6] = 3  # 8 px inside the GT
    pred[4:6, 2:7] = 5  # 10 px inside the GT ...
    pred[6:8, 2:5] = 5  # ... and 6 px outside
    table_iou = {3: Fraction(8, 24), 5: Fraction(10, 30)}
    assert table_iou[3] == table_iou[5]
    result = evaluate_instances(gt, pred)
    # Paired with 5: inter 10, union 30; prediction 3 unpaired adds its 8 px.
    assert result["aji"] == pytest.approx(float(Fraction(10, 30 + 8)))
    assert result["aji"] == pytest.approx(reference_metrics(gt, pred)["aji"], abs=1e-12)
    # AJI+ (get_fast_aji_plus) maximises the same epsilon ratio, so its one-to-one pairing makes the
    # same choice; the lowest id would have given 8 / (24 + 16).
    assert result["aji_plus"] == pytest.approx(float(Fraction(10, 30 + 8)))
    assert result["aji_plus"] == pytest.approx(reference_metrics(gt, pred)["aji_plus"], abs=1e-12)


def test_aji_plus_tie_between_pairings_is_broken_as_in_hovernet() -> None:
    """Two GT and two predictions, every pair overlapping, (inter, union): A-P (7, 21), A-Q (4, 16),
    B-P (3, 18), B-Q (1, 12). Both pairings reach a total IoU of exactly 5/12, but they give
    different AJI+: 8/33 pairing A-P, B-Q and 7/34 pairing A-Q, B-P. HoVer-Net's epsilon makes the
    first one the larger (its IoUs lose less to the epsilon), whatever the ids."""
    gt = np.array([[1, 1, 2, 0, 1, 0], [1, 2, 1, 0, 2, 0], [2, 2, 1, 1, 2, 1], [1, 0, 2, 0, 1, 1],
                   [1, 0, 0, 0, 1, 1]], np.int32)
    pred = np.array([[1, 2, 0, 0, 0, 2], [1, 2, 1, 0, 0, 1], [1, 0, 2, 1, 1, 2], [0, 1, 1, 1, 1, 1],
                     [2, 0, 0, 1, 1, 0]], np.int32)
    table = overlap_table(gt, pred)
    assert table.intersection.tolist() == [7, 4, 3, 1] and table.union.tolist() == [21, 16, 18, 12]
    swapped = np.choose(pred, [0, 2, 1]).astype(np.int32)  # P and Q trade ids
    for prediction in (pred, swapped):
        result = evaluate_instances(gt, prediction)
        assert result["aji_plus"] == pytest.approx(float(Fraction(7 + 1, 21 + 12)), abs=1e-12)
        assert result["aji_plus"] == pytest.approx(reference_metrics(gt, prediction)["aji_plus"], abs=1e-12)


def test_missed_nucleus_and_false_positive() -> None:
    a, b = (1, (1, 5, 1, 5)), (2, (8, 12, 8, 14))  # 16 px and 24 px
    gt = square((16, 16), a, b)
    missed = evaluate_instances(gt, square((16, 16), a))
    assert missed["aji"] == pytest.approx(16 / 40)
    assert missed["dq"] == pytest.approx(1 / 1.5) and missed["sq"] == 1.0
    assert (missed["tp"], missed["fp"], missed["fn"]) == (1, 0, 1)
    extra = evaluate_instances(square((16, 16), a), gt)
    assert extra["aji"] == pytest.approx(16 / 40)
    assert (extra["tp"], extra["fp"], extra["fn"]) == (1, 1, 0)
    assert extra["dice"] == pytest.approx(2 * 16 / (16 + 40))


def test_shifted_prediction() -> None:
    gt = square((20, 20), (1, (5, 15, 5, 15)))
    pred = np.roll(gt, 2, axis=1)
    result = evaluate_instances(gt, pred)  # intersection 80, union 120
    assert result["dice"] == pytest.approx(0.8)
    assert result["aji"] == pytest.approx(2 / 3) and result["aji_plus"] == pytest.approx(2 / 3)
    assert result["pq"] == pytest.approx(2 / 3) and result["dq"] == 1.0
    assert result["msa"] == pytest.approx(4 / 10)  # 0.667 passes 0.50, 0.55, 0.60, 0.65


def test_empty_map_conventions() -> None:
    empty = np.zeros((8, 8), np.uint16)
    one = square((8, 8), (1, (1, 3, 1, 3)))
    assert all(evaluate_instances(empty, empty)[m] == 1.0 for m in METRIC_NAMES)
    assert all(evaluate_instances(one, empty)[m] == 0.0 for m in METRIC_NAMES)
    assert all(evaluate_instances(empty, one)[m] == 0.0 for m in METRIC_NAMES)
    assert dice(empty, empty) == aji(empty, empty) == aji_plus(empty, empty) == 1.0
    assert panoptic_quality(empty, one) == (0.0, 0.0, 0.0)
    assert mean_segmentation_accuracy(empty, empty) == 1.0


def test_ambiguous_removal_at_exactly_25_percent_keeps_and_just_over_removes() -> None:
    gt = square((12, 12), (1, (0, 4, 0, 4)), (2, (6, 10, 6, 10)))  # two 16 px nuclei
    pred = gt.copy()
    vague = np.zeros((12, 12), bool)
    vague[0, 0:4] = True  # exactly 4 of 16 px of nucleus 1: kept, loses those 4 pixels
    kept = evaluate_instances(gt, pred, vague)
    assert kept["n_gt"] == 2 and kept["n_pred"] == 2 and kept["aji"] == 1.0
    assert reference_metrics(gt, pred, vague)["n_gt"] == 2
    vague[1, 0] = True  # 5 of 16: removed from both maps
    removed = evaluate_instances(gt, pred, vague)
    assert removed["n_gt"] == 1 and removed["n_pred"] == 1 and removed["aji"] == 1.0
    # Removal is decided per side: a prediction mostly inside the vague area disappears, the GT
    # instance beside it does not, so the GT becomes a miss.
    pred2 = square((12, 12), (1, (0, 2, 0, 4)), (2, (6, 10, 6, 10)))  # 8 px, 5 of them vague
    one_side = evaluate_instances(gt, pred2, vague, vague_threshold=0.5)
    assert (one_side["n_gt"], one_side["n_pred"]) == (2, 1)
    assert one_side["fn"] == 1


def test_zone_footprint_is_opencv_ellipse() -> None:
    np.testing.assert_array_equal(zone_footprint(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    np.testing.assert_array_equal(
        zone_footprint(2),
        [[0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]],
    )
    for width in range(1, 7):
        np.testing.assert_array_equal(zone_footprint(width), ellipse(width))


def test_zone_blanks_borders_and_forgives_a_one_pixel_shift() -> None:
    gt = square((30, 30), (1, (5, 15, 5, 15)), (2, (15, 25, 10, 20)))  # touching nuclei
    pred = np.roll(gt, 1, axis=0)
    plain = evaluate_instances(gt, pred)
    zoned = evaluate_instances(gt, pred, zone_width=1)
    assert zoned["aji"] == 1.0 and plain["aji"] < 0.85
    zone = boundary_zone(gt, 1)
    assert zone[15, 12] and zone[14, 12]  # both sides of the line between the two nuclei
    assert not zone[10, 10] and not zone[0, 0]


# ------------------------------------------------------------------ agreement with the reference

small_maps = st.integers(1, 10).flatmap(
    lambda h: st.integers(1, 10).flatmap(
        lambda w: st.tuples(
            arrays(np.int16, (h, w), elements=st.integers(0, 4)),
            arrays(np.int16, (h, w), elements=st.integers(0, 4)),
            st.none() | arrays(np.bool_, (h, w)),
        )
    )
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maps=small_maps, threshold=st.sampled_from([0.0, 0.25, 0.5, 1.0]), zone=st.integers(0, 2))
def test_fragmented_random_maps_match_reference(maps, threshold, zone) -> None:
    gt, pred, vague = maps
    assert_matches_reference(gt, pred, vague, threshold, zone, strict_plus=False)


def paint(shape, boxes):
    out = np.zeros(shape, np.int32)
    for label, y, x, h, w in boxes:
        out[y: y + h, x: x + w] = label
    return out


# (label, top, left, height, width) rectangles painted in order: later ones overwrite.
box_lists = st.lists(
    st.tuples(st.integers(1, 9), *[st.integers(0, 23)] * 2, *[st.integers(1, 9)] * 2),
    max_size=9,
).map(list)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gt_boxes=box_lists, pred_boxes=box_lists, zone=st.integers(0, 3), vague_box=st.none() | box_lists)
def test_blob_maps_match_reference(gt_boxes, pred_boxes, zone, vague_box) -> None:
    gt, pred = paint((24, 24), gt_boxes), paint((24, 24), pred_boxes)
    vague = None if vague_box is None else paint((24, 24), vague_box) > 0
    assert_matches_reference(gt, pred, vague, 0.25, zone, strict_plus=False)


def sample_tiles(root: Path, limit: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    organ = root / "human spleen"
    tiles = []
    for path in sorted((organ / "label masks modify").glob("*.tif"))[:limit]:
        vague_path = organ / "vague areas" / "mask binary" / f"{path.stem}.png"
        vague = np.asarray(Image.open(vague_path)) > 0 if vague_path.exists() else None
        tiles.append((path.stem, tifffile.imread(path), vague))
    return tiles


def perturbations(gt: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Realistic prediction errors: eroded, merged, split, shifted, dropped, all relabelled."""
    rng = np.random.default_rng(seed)
    ids = np.unique(gt)[1:]
    eroded = np.where(ndimage.grey_erosion(gt, size=3) == gt, gt, 0)
    # Merge each nucleus into a touching neighbour with a larger id (where one exists).
    merged = gt.copy()
    right = gt[:, 1:][(gt[:, 1:] != gt[:, :-1]) & (gt[:, 1:] > 0) & (gt[:, :-1] > 0)]
    left = gt[:, :-1][(gt[:, 1:] != gt[:, :-1]) & (gt[:, 1:] > 0) & (gt[:, :-1] > 0)]
    for a, b in zip(left, right, strict=True):
        merged[merged == a] = b
    # Split every nucleus along the column through its centroid.
    split = gt.astype(np.int64) * 2
    cols = np.broadcast_to(np.arange(gt.shape[1]), gt.shape)
    centre_x = ndimage.mean(cols, gt, ids)
    lut = np.zeros(gt.max() + 1)
    lut[ids] = centre_x
    split[(gt > 0) & (cols > lut[gt])] += 1
    shifted = np.roll(gt, (2, -3), axis=(0, 1))
    dropped = np.where(np.isin(gt, rng.choice(ids, size=len(ids) // 4, replace=False)), 0, gt)
    out = {"eroded": eroded, "merged": merged, "split": split, "shifted": shifted, "dropped": dropped}
    # Random new ids (with large values) so nothing relies on matching id numbers.
    for name, pred in out.items():
        values = np.unique(pred)[1:]
        lut = np.zeros(int(pred.max()) + 1, np.int64)
        lut[values] = rng.permutation(len(values)) * 1009 + 70001
        out[name] = lut[pred]
    return out


def test_bundled_tiles_with_perturbations_match_reference(sample_root: Path) -> None:
    for index, (stem, gt, vague) in enumerate(sample_tiles(sample_root)):
        for name, pred in perturbations(gt, index).items():
            result = assert_matches_reference(gt, pred, vague)
            assert result["n_gt"] > 0, (stem, name)
            if index % 2 == 0:
                # The per-instance reference ring is slow on a whole tile: check zones on a corner.
                corner = (slice(0, 160), slice(0, 160))
                assert_matches_reference(gt[corner], pred[corner],
                                         vague[corner] if vague is not None else None, 0.25, 1 + index % 3)


@pytest.mark.slow
def test_shared_spleen_tiles_with_perturbations_match_reference() -> None:
    if not SHARED_SPLEEN.is_dir():
        pytest.skip(f"shared NuInsSeg spleen tiles not found at {SHARED_SPLEEN}")
    tiles = sample_tiles(SHARED_SPLEEN.parent)
    for index, (_, gt, vague) in enumerate(tiles[2::12]):  # 3 of 34 tiles keep the suite short
        for pred in perturbations(gt, 100 + index).values():
            assert_matches_reference(gt, pred, vague)


# ------------------------------------------------------------------ properties


@settings(max_examples=150, deadline=None)
@given(gt_boxes=box_lists, pred_boxes=box_lists)
def test_aji_is_bounded_by_foreground_iou(gt_boxes, pred_boxes) -> None:
    gt, pred = paint((24, 24), gt_boxes), paint((24, 24), pred_boxes)
    result = evaluate_instances(gt, pred)
    if result["n_gt"] and result["n_pred"]:
        foreground_iou = result["dice"] / (2 - result["dice"])
        assert result["aji"] <= foreground_iou + 1e-12
        assert result["aji_plus"] <= foreground_iou + 1e-12


@settings(max_examples=150, deadline=None)
@given(gt_boxes=box_lists, pred_boxes=box_lists)
def test_symmetric_metrics_are_symmetric(gt_boxes, pred_boxes) -> None:
    gt, pred = paint((24, 24), gt_boxes), paint((24, 24), pred_boxes)
    forward, backward = evaluate_instances(gt, pred), evaluate_instances(pred, gt)
    for name in ("dice", "dq", "sq", "pq", "msa", "f1"):
        assert forward[name] == pytest.approx(backward[name], abs=1e-12), name
    assert (forward["fp"], forward["fn"]) == (backward["fn"], backward["fp"])


@settings(max_examples=150, deadline=None)
@given(maps=small_maps, seed=st.integers(0, 2**16))
def test_invariant_to_id_values(maps, seed) -> None:
    gt, pred, _ = maps
    rng = np.random.default_rng(seed)
    base = evaluate_instances(gt, pred)
    # Order-preserving relabelling to large sparse ids: identical, ties included.
    spread_gt = gt.astype(np.int64) * 7919 + 1000003 * (gt > 0)
    spread = evaluate_instances(spread_gt, pred.astype(np.int64) * 104729)
    assert spread == base
    # Any permutation of the GT ids: GT order plays no role in AJI, PQ, mSA.
    lut = np.r_[0, rng.permutation(np.arange(1, 5)) * 3]
    permuted = evaluate_instances(lut[gt], pred)
    for name in ("dice", "aji", "dq", "sq", "pq", "msa", "f1"):
        assert permuted[name] == pytest.approx(base[name], abs=1e-12), name


def test_permuting_ids_of_real_tiles_changes_nothing(sample_root: Path) -> None:
    rng = np.random.default_rng(5)
    for stem, gt, _ in sample_tiles(sample_root)[:3]:
        for pred in perturbations(gt, 7).values():
            base = evaluate_instances(gt, pred)
            lut = np.r_[0, rng.permutation(np.arange(1, int(pred.max()) + 1))]
            lut_gt = np.r_[0, rng.permutation(np.arange(1, int(gt.max()) + 1))]
            permuted = evaluate_instances(lut_gt[gt], lut[pred])
            for name in METRIC_NAMES:
                assert permuted[name] == pytest.approx(base[name], abs=1e-12), (stem, name)


def test_dense_and_run_length_tables_agree(sample_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (_, gt, vague), *_ = sample_tiles(sample_root)
    pred = perturbations(gt, 3)["split"]
    dense = evaluate_instances(gt, pred % 4096, vague, zone_width=1)
    monkeypatch.setattr(table_module, "_DENSE_BINS_PER_PIXEL", 0)
    monkeypatch.setattr(table_module, "_DENSE_BINS_FLOOR", 0)
    assert evaluate_instances(gt, pred % 4096, vague, zone_width=1) == dense


def test_boundary_zone_matches_per_instance_ring(sample_root: Path) -> None:
    (_, gt, _), *_ = sample_tiles(sample_root)
    gt = gt[:256, 128:]  # nuclei cut by the crop edge included
    for width in (1, 2, 3):
        np.testing.assert_array_equal(boundary_zone(gt, width), boundary_ring(gt.astype(np.int64), width))


# ------------------------------------------------------------------ aggregation


def test_pooled_values_equal_one_mosaic_and_means_are_per_image(sample_root: Path) -> None:
    tiles = sample_tiles(sample_root)[:4]
    acc = MetricAccumulator()
    gts, preds, vagues = [], [], []
    for index, (stem, gt, vague) in enumerate(tiles):
        pred = perturbations(gt, index)[["eroded", "merged", "split", "dropped"][index]]
        acc.update(gt, pred, vague, key=stem)
        # Side by side with a blank column between: no instance crosses a seam.
        offset = 10**6 * (index + 1)
        gts.append(np.pad(np.where(gt > 0, gt.astype(np.int64) + offset, 0), ((0, 0), (0, 1))))
        preds.append(np.pad(np.where(pred > 0, pred + offset, 0), ((0, 0), (0, 1))))
        vagues.append(np.pad(np.zeros(gt.shape, bool) if vague is None else vague, ((0, 0), (0, 1))))
    summary = acc.compute()
    mosaic = evaluate_instances(np.hstack(gts), np.hstack(preds), np.hstack(vagues))
    for name in METRIC_NAMES:
        assert summary.pooled[name] == pytest.approx(mosaic[name], abs=1e-12), name
        per_image = np.array([row[name] for row in summary.per_image])
        weights = np.array([row["n_gt"] for row in summary.per_image])
        assert summary.mean[name] == pytest.approx(per_image.mean(), abs=1e-12)
        assert summary.std[name] == pytest.approx(per_image.std(ddof=1), abs=1e-12)
        assert summary.weighted_mean[name] == pytest.approx(np.average(per_image, weights=weights), abs=1e-12)
    assert [row["key"] for row in summary.per_image] == [stem for stem, _, _ in tiles]
    assert summary.n_gt == mosaic["n_gt"] and summary.n_images == 4
    assert summary.to_dict()["pooled"] == summary.pooled


def test_accumulator_rejects_duplicate_keys_and_empty_compute() -> None:
    acc = MetricAccumulator()
    with pytest.raises(NucleisamError, match="no images"):
        acc.compute()
    gt = square((5, 5), (1, (0, 2, 0, 2)))
    acc.update(gt, gt, key="a")
    with pytest.raises(NucleisamError, match="already scored"):
        acc.update(gt, gt, key="a")
    assert acc.compute().std["aji"] == 0.0 and len(acc) == 1
    acc.reset()
    assert len(acc) == 0


# ------------------------------------------------------------------ bad input


def test_bad_inputs_are_clear_errors() -> None:
    gt = np.zeros((4, 4), np.int32)
    with pytest.raises(NucleisamError, match="a batch is a loop of images"):
        evaluate_instances(np.zeros((2, 4, 4), np.int32), np.zeros((2, 4, 4), np.int32))
    with pytest.raises(NucleisamError, match="dtype float"):
        evaluate_instances(gt, gt.astype(float))
    with pytest.raises(NucleisamError, match="negative"):
        evaluate_instances(gt - 1, gt)
    with pytest.raises(NucleisamError, match="shape"):
        evaluate_instances(gt, np.zeros((4, 5), np.int32))
    with pytest.raises(NucleisamError, match="vague mask"):
        evaluate_instances(gt, gt, np.zeros((3, 3), bool))
    with pytest.raises(NucleisamError, match="zone_width"):
        evaluate_instances(gt, gt, zone_width=-1)
    with pytest.raises(NucleisamError, match="vague_threshold"):
        evaluate_instances(gt, gt, vague_threshold=1.5)


def test_ids_near_the_int64_limit() -> None:
    gt = square((12, 12), (1, (1, 5, 1, 5)), (2, (6, 11, 6, 11)))
    pred = np.roll(gt, 1, axis=1)
    huge_gt = np.where(gt > 0, gt.astype(np.int64) + 2**62, 0)
    huge_pred = np.where(pred > 0, pred.astype(np.uint64) + np.uint64(2**63 - 10), np.uint64(0))
    assert evaluate_instances(huge_gt, huge_pred) == evaluate_instances(gt, pred)
