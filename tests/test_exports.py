"""Exports read back: label TIFF, QuPath GeoJSON, CSV and overlay agree with the label map."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.color import rgb2hed
from skimage.draw import polygon as draw_polygon
from skimage.measure import regionprops
from skimage.segmentation import find_boundaries

from nucleisam.data import read_rgb
from nucleisam.errors import NucleisamError
from nucleisam.exports import (
    export_all,
    nucleus_polygons,
    output_paths,
    overlay_image,
    parse_formats,
    write_label_tiff,
)
from nucleisam.morphometry import measure_nuclei

STEM = "human_spleen_25"
Tile = tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def spleen(sample_root: Path) -> Tile:
    """A real H&E tile (190 annotated nuclei) and its instance label map."""
    organ = sample_root / "human spleen"
    image = read_rgb(organ / "tissue images" / f"{STEM}.png")
    labels = tifffile.imread(organ / "label masks modify" / f"{STEM}.tif").astype(np.int32)
    return image, labels


def rasterise(ring: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside a ring given in QuPath coordinates (centres at +0.5)."""
    mask = np.zeros(shape, dtype=bool)
    rows, cols = draw_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=shape)
    mask[rows, cols] = True
    return mask


def paint(rings: dict[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Label map drawn from rings; fails if two rings claim the same pixel."""
    painted = np.zeros(shape, dtype=np.int64)
    for label_id, ring in rings.items():
        rows, cols = draw_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=shape)
        assert not painted[rows, cols].any(), f"ring {label_id} overlaps another"
        painted[rows, cols] = label_id
    return painted


def test_measurements_match_regionprops_on_real_nuclei(spleen: Tile) -> None:
    image, labels = spleen
    table = measure_nuclei(labels, image, mpp=0.25)
    props = {region.label: region for region in regionprops(labels, intensity_image=image)}
    np.testing.assert_array_equal(table["id"], sorted(props))
    hematoxylin = rgb2hed(image)[..., 0]
    for row, label_id in enumerate(table["id"]):
        region = props[label_id]
        assert table["area_px"][row] == region.area
        assert table["centroid_y"][row] == pytest.approx(region.centroid[0], abs=1e-9)
        assert table["centroid_x"][row] == pytest.approx(region.centroid[1], abs=1e-9)
        assert table["perimeter_px"][row] == pytest.approx(region.perimeter, abs=1e-9)
        assert table["eccentricity"][row] == pytest.approx(region.eccentricity, abs=1e-9)
        means = [table["mean_r"][row], table["mean_g"][row], table["mean_b"][row]]
        np.testing.assert_allclose(means, region.intensity_mean, atol=1e-9)
        expected_h = hematoxylin[labels == label_id].mean()
        assert table["hematoxylin_od_mean"][row] == pytest.approx(expected_h, abs=1e-9)
        assert 0.5 < table["solidity"][row] <= 1.0
    np.testing.assert_allclose(table["area_um2"], table["area_px"] * 0.0625)
    np.testing.assert_allclose(table["perimeter_um"], table["perimeter_px"] * 0.25)


def test_solidity_known_shapes_and_sparse_ids() -> None:
    labels = np.zeros((12, 12), dtype=np.int64)
    labels[1:4, 1:6] = 7  # rectangle: solidity exactly 1
    labels[6:8, 6:8] = 10**12  # L-shape: 3 pixels, hull of their squares has area 3.5
    labels[7, 7] = 0
    table = measure_nuclei(labels)
    assert table["id"].tolist() == [7, 10**12]
    assert table["area_px"].tolist() == [15, 3]
    assert table["solidity"] == pytest.approx([1.0, 3 / 3.5])
    assert "mean_r" not in table and "area_um2" not in table


def test_label_tiff_round_trip_dtype_and_resolution(tmp_path: Path, spleen: Tile) -> None:
    _, labels = spleen
    path = write_label_tiff(tmp_path / "a.tif", labels, mpp=0.25)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint16
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert 1e4 / page.resolution[0] == pytest.approx(0.25)
        np.testing.assert_array_equal(page.asarray(), labels)

    many = np.arange(300 * 300, dtype=np.int64).reshape(300, 300)  # 89,999 nuclei of one pixel
    path = write_label_tiff(tmp_path / "many.tif", many)
    read = tifffile.imread(path)
    assert read.dtype == np.uint32
    np.testing.assert_array_equal(read, many)


def test_polygons_rasterise_back_to_the_label_map(spleen: Tile) -> None:
    _, labels = spleen
    rings = nucleus_polygons(labels)
    assert sorted(rings) == np.unique(labels)[1:].tolist()
    for ring in rings.values():
        np.testing.assert_array_equal(ring[0], ring[-1])  # closed
        assert len(ring) >= 4
    # Every nucleus here is one hole-free piece: the rings give back the exact label map.
    np.testing.assert_array_equal(paint(rings, labels.shape), labels)


def test_polygons_of_broken_and_hollow_nuclei_keep_one_outer_ring() -> None:
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[2:9, 2:9] = 1
    labels[4:7, 4:7] = 0  # hole: filled in the ring
    labels[12:18, 3:9] = 2
    labels[12, 15] = 2  # a stray pixel of nucleus 2: dropped from its ring
    labels[15, 15] = 3  # a single-pixel nucleus
    rings = nucleus_polygons(labels)
    filled_1 = np.pad(np.ones((7, 7), bool), ((2, 11), (2, 11)))
    np.testing.assert_array_equal(rasterise(rings[1], labels.shape), filled_1)
    expected_2 = labels == 2
    expected_2[12, 15] = False
    np.testing.assert_array_equal(rasterise(rings[2], labels.shape), expected_2)
    np.testing.assert_array_equal(rasterise(rings[3], labels.shape), labels == 3)
    assert rings[1][:, 0].min() == 2.0 and rings[1][:, 0].max() == 9.0  # halfway to the neighbours


def test_export_all_reads_back(tmp_path: Path, spleen: Tile) -> None:
    image, labels = spleen
    paths = export_all(labels, image, tmp_path, STEM, mpp=0.5)
    assert paths == output_paths(tmp_path, STEM, ("tiff", "geojson", "csv", "overlay"))
    ids = np.unique(labels)[1:]
    areas = np.bincount(labels.ravel())

    np.testing.assert_array_equal(tifffile.imread(paths["tiff"]), labels)

    with open(paths["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["id"]) for row in rows] == ids.tolist()
    assert [int(row["area_px"]) for row in rows] == areas[ids].tolist()
    assert [float(row["area_um2"]) for row in rows] == pytest.approx((areas[ids] * 0.25).tolist())
    assert list(rows[0]) == [
        "id", "centroid_x", "centroid_y", "area_px", "area_um2", "perimeter_px", "perimeter_um",
        "eccentricity", "solidity", "mean_r", "mean_g", "mean_b", "hematoxylin_od_mean",
    ]

    collection = json.loads(paths["geojson"].read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == len(ids)
    assert len({feature["id"] for feature in features}) == len(ids)
    rings = {}
    for feature in features:
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        assert properties["classification"]["name"] == "Nucleus"
        measurements = properties["measurements"]
        label_id = measurements["id"]
        assert measurements["area_px"] == areas[label_id]
        assert feature["geometry"]["type"] == "Polygon"
        ring = rings[label_id] = np.asarray(feature["geometry"]["coordinates"][0])
        # The centroid (array convention) sits inside the ring (QuPath convention, +0.5).
        cx, cy = measurements["centroid_x"] + 0.5, measurements["centroid_y"] + 0.5
        assert ring[:, 0].min() < cx < ring[:, 0].max() and ring[:, 1].min() < cy < ring[:, 1].max()
    assert sorted(rings) == ids.tolist()
    # Polygons rasterised by pixel centres: IoU with each nucleus (all exactly 1 here).
    painted = paint(rings, labels.shape)
    both = np.bincount(labels[painted == labels], minlength=len(areas))
    drawn = np.bincount(painted.ravel(), minlength=len(areas))
    iou = both[ids] / (areas[ids] + drawn[ids] - both[ids])
    assert iou.min() == 1.0

    overlay = np.asarray(Image.open(paths["overlay"]).convert("RGB"))
    assert overlay.shape == image.shape
    edges = find_boundaries(labels, mode="inner")
    assert (overlay[edges] == (0, 255, 0)).all()
    np.testing.assert_array_equal(overlay[~edges], image[~edges])


def test_overlay_is_reduced_for_large_images(spleen: Tile) -> None:
    image, labels = spleen
    small = overlay_image(image, labels, max_side=200)  # 512 → factor 3
    assert small.shape == (math.ceil(512 / 3), math.ceil(512 / 3), 3)
    assert (small == (0, 255, 0)).all(axis=-1).sum() > 100


def test_existing_outputs_are_kept_unless_overwrite(tmp_path: Path, spleen: Tile) -> None:
    image, labels = spleen
    paths = output_paths(tmp_path, STEM, ("tiff", "csv"))
    paths["csv"].write_text("keep me")
    with pytest.raises(NucleisamError, match=r"_nuclei\.csv.*\(overwrite\)"):
        export_all(labels, image, tmp_path, STEM, formats=("tiff", "csv"))
    assert not paths["tiff"].exists()  # nothing written when one target is taken
    assert paths["csv"].read_text() == "keep me"
    export_all(labels, image, tmp_path, STEM, formats=("tiff", "csv"), overwrite=True)
    assert paths["csv"].read_text().startswith("id,")
    # Only the two outputs, no temporary files.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())


def test_empty_label_map_gives_empty_but_valid_exports(tmp_path: Path) -> None:
    image = np.full((64, 48, 3), 230, dtype=np.uint8)
    labels = np.zeros((64, 48), dtype=np.int32)
    paths = export_all(labels, image, tmp_path, "blank")
    assert json.loads(paths["geojson"].read_text()) == {"type": "FeatureCollection", "features": []}
    assert paths["csv"].read_text().count("\n") == 1
    np.testing.assert_array_equal(tifffile.imread(paths["tiff"]), labels)
    np.testing.assert_array_equal(np.asarray(Image.open(paths["overlay"]).convert("RGB")), image)


def test_parse_formats() -> None:
    assert parse_formats("csv, TIFF,csv") == ("csv", "tiff")
    with pytest.raises(NucleisamError, match=r"pdf \(formats\)"):
        parse_formats("tiff,pdf")
    with pytest.raises(NucleisamError, match=r"\(none given\) \(formats\)"):
        parse_formats(" , ")
