"""Label maps, binary masks and Aperio XML rasterisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from matplotlib.path import Path as MplPath
from PIL import Image

from nucleisam.data import (
    count_instances,
    read_binary_mask,
    read_label_map,
    read_xml_instances,
    read_xml_polygons,
)
from nucleisam.errors import NucleisamError


def _instances() -> np.ndarray:
    """Three nuclei with non-contiguous ids, two of them touching."""
    labels = np.zeros((20, 30), np.uint16)
    labels[2:8, 3:9] = 7
    labels[2:8, 9:14] = 300  # touches id 7
    labels[12:18, 20:27] = 2
    return labels


@pytest.mark.parametrize("suffix", [".tif", ".png", ".npy"])
def test_label_map_round_trips_each_format_as_int32(tmp_path: Path, suffix: str) -> None:
    labels = _instances()
    path = tmp_path / f"tile 01{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, labels)
    elif suffix == ".png":
        Image.fromarray(labels).save(path)
    else:
        np.save(path, labels.astype(np.int64))
    read = read_label_map(path)
    assert read.dtype == np.int32
    np.testing.assert_array_equal(read, labels)
    assert count_instances(read) == 3


def test_sample_label_map_has_the_nuclei_of_the_tile(sample_root: Path) -> None:
    path = sample_root / "human spleen" / "label masks modify" / "human_spleen_01.tif"
    labels = read_label_map(path)
    assert labels.shape == (512, 512) and labels.dtype == np.int32
    ids = np.unique(labels)
    assert ids[0] == 0 and len(ids) - 1 == count_instances(labels) > 20


def test_fractional_negative_and_multichannel_label_maps_are_refused(tmp_path: Path) -> None:
    # Whole-number ids stored as floats (a common export) are read as the integers they are.
    np.save(tmp_path / "whole.npy", _instances().astype(np.float32))
    np.testing.assert_array_equal(read_label_map(tmp_path / "whole.npy"), _instances().astype(np.int32))
    fractional = _instances().astype(np.float32)
    fractional[0, 0] = 0.5
    np.save(tmp_path / "float.npy", fractional)
    with pytest.raises(NucleisamError, match=r"float\.npy.*fractional or non-finite"):
        read_label_map(tmp_path / "float.npy")
    fractional[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "float.tif", fractional)
    with pytest.raises(NucleisamError, match=r"float\.tif.*fractional or non-finite"):
        read_label_map(tmp_path / "float.tif")
    negative = _instances().astype(np.int32)
    negative[0, 0] = -1
    np.save(tmp_path / "neg.npy", negative)
    with pytest.raises(NucleisamError, match=r"neg\.npy.*negative ids"):
        read_label_map(tmp_path / "neg.npy")
    colour = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(NucleisamError, match=r"colour\.png.*shape"):
        read_label_map(tmp_path / "colour.png")
    np.save(tmp_path / "volume.npy", np.zeros((2, 20, 30), np.int32))
    with pytest.raises(NucleisamError, match=r"volume\.npy"):
        read_label_map(tmp_path / "volume.npy")


def test_binary_mask_is_refused_as_instances_unless_split(tmp_path: Path) -> None:
    binary = (_instances() > 0).astype(np.uint8) * 255
    Image.fromarray(binary).save(tmp_path / "binary.png")
    with pytest.raises(NucleisamError, match=r"binary\.png.*binary mask.*binary_masks=True"):
        read_label_map(tmp_path / "binary.png")
    split = read_label_map(tmp_path / "binary.png", binary_masks=True)
    # Ids 7 and 300 touch, so connected components give two regions, not three.
    assert count_instances(split) == 2
    np.testing.assert_array_equal(split > 0, binary > 0)
    # One single region with value 1 is a valid instance map of one nucleus.
    single = np.zeros((10, 10), np.uint8)
    single[2:5, 2:5] = 1
    np.save(tmp_path / "single.npy", single)
    np.testing.assert_array_equal(read_label_map(tmp_path / "single.npy"), single)


def test_binary_masks_read_as_bool(tmp_path: Path, sample_root: Path) -> None:
    mask = np.zeros((6, 7), bool)
    mask[1:3, 2:6] = True
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", mask.astype(np.uint8))
    for name in ("a.png", "b.npy"):
        read = read_binary_mask(tmp_path / name)
        assert read.dtype == np.bool_
        np.testing.assert_array_equal(read, mask)
    vague_dir = sample_root / "human spleen" / "vague areas" / "mask binary"
    vague = read_binary_mask(vague_dir / "human_spleen_05.png")
    assert vague.shape == (512, 512) and 0 < vague.sum() < vague.size


def _write_xml(path: Path, regions: list[list[tuple[float, float]]], *, negative: int | None = None) -> None:
    parts = ['<?xml version="1.0"?>', '<Annotations MicronsPerPixel="0.25">',
             '<Annotation Id="1"><Regions>']
    for number, vertices in enumerate(regions, start=1):
        flag = ' NegativeROA="1"' if negative == number else ""
        parts.append(f'<Region Id="{number}"{flag}><Vertices>')
        parts.extend(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in vertices)
        parts.append("</Vertices></Region>")
    parts.append("</Regions></Annotation></Annotations>")
    path.write_text("\n".join(parts))


def test_xml_regions_rasterise_to_one_id_each(tmp_path: Path) -> None:
    rectangle = [(1.5, 2.5), (5.5, 2.5), (5.5, 4.5), (1.5, 4.5)]  # X columns 2..5, Y rows 3..4
    triangle = [(10.2, 3.1), (18.7, 4.9), (12.3, 11.6)]
    overlapping = [(4.5, 3.5), (7.5, 3.5), (7.5, 6.5), (4.5, 6.5)]  # drawn last, over the rectangle
    xml = tmp_path / "tile 1.xml"
    _write_xml(xml, [rectangle, triangle, overlapping])
    labels = read_xml_instances(xml, (16, 24))
    assert labels.dtype == np.int32 and labels.shape == (16, 24)

    expected = np.zeros((16, 24), np.int32)
    expected[3:5, 2:6] = 1
    # Reference for the triangle: an independent point-in-polygon test on the pixel centres.
    rows, cols = np.mgrid[:16, :24]
    inside = MplPath(np.array(triangle)).contains_points(np.c_[cols.ravel(), rows.ravel()]).reshape(16, 24)
    expected[inside] = 2
    expected[4:7, 5:8] = 3
    np.testing.assert_array_equal(labels, expected)
    assert np.count_nonzero(labels == 1) == 2 * 4 - 1  # the rectangle minus the pixel (4, 5) id 3 covers


def test_xml_negative_regions_are_skipped_and_bad_files_named(tmp_path: Path) -> None:
    square = [(1.5, 1.5), (3.5, 1.5), (3.5, 3.5), (1.5, 3.5)]
    _write_xml(tmp_path / "neg.xml", [square, square], negative=2)
    assert len(read_xml_polygons(tmp_path / "neg.xml")) == 1
    (tmp_path / "broken.xml").write_text("<Annotations><Region>")
    with pytest.raises(NucleisamError, match=r"broken\.xml"):
        read_xml_instances(tmp_path / "broken.xml", (8, 8))
    (tmp_path / "other.xml").write_text("<svg><rect/></svg>")
    with pytest.raises(NucleisamError, match=r"other\.xml.*Regions"):
        read_xml_instances(tmp_path / "other.xml", (8, 8))
    (tmp_path / "nan.xml").write_text('<Annotations><Regions><Region><Vertex X="a" Y="1"/></Region>'
                                      "</Regions></Annotations>")
    with pytest.raises(NucleisamError, match=r"nan\.xml.*numeric"):
        read_xml_instances(tmp_path / "nan.xml", (8, 8))
