"""The slide writer's pyramidal OME-TIFF label image: chunks committed in any order come out as one
tiled pyramid equal to the labels they hold; a failed or killed slide leaves nothing behind."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nucleisam.exports import slides
from nucleisam.exports.slides import SLIDE_SUFFIXES, SlideWriter, remove_partials
from nucleisam.predict.assemble import CommittedChunk
from nucleisam.predict.slide import SlideGeometry

HEIGHT, WIDTH, CELL = 1100, 1300, 512  # not multiples of the 512 tile: edge tiles are cut short
MPP = 0.2435


@pytest.fixture(scope="module")
def chunks(sample_root: Path) -> tuple[np.ndarray, list[CommittedChunk]]:
    """The bundled NuInsSeg spleen masks (real nuclei shapes) cut into 512² chunks over a 1100×1300
    label image, ids made global and unique per chunk; returns the whole image and the chunks in a
    shuffled order, as distributed workers commit them."""
    masks = [tifffile.imread(path).astype(np.uint32)
             for path in sorted((sample_root / "human spleen" / "label masks modify").glob("*.tif"))]
    whole = np.zeros((HEIGHT, WIDTH), dtype=np.uint32)
    result, offset = [], 0
    corners = [(top, left) for top in range(0, HEIGHT, CELL) for left in range(0, WIDTH, CELL)]
    for index, (top, left) in enumerate(corners):
        mask = masks[index % len(masks)][: HEIGHT - top, : WIDTH - left]
        labels = np.where(mask > 0, mask + offset, 0).astype(np.uint32)
        offset += int(mask.max())
        whole[top : top + labels.shape[0], left : left + labels.shape[1]] = labels
        region = (top, left, top + labels.shape[0], left + labels.shape[1])
        result.append(CommittedChunk(index, region, labels, {}, [], 1))
    random.Random(3).shuffle(result)
    assert offset > 500
    return whole, result


def writer(out: Path, formats: tuple[str, ...]) -> SlideWriter:
    geometry = SlideGeometry(WIDTH, HEIGHT, MPP, 1.0, 0, 1.0, MPP)
    return SlideWriter(out, "s", formats, geometry=geometry, dimensions=(WIDTH, HEIGHT),
                       thumbnail=np.zeros((8, 8, 3), dtype=np.uint8), tissue=None)


def test_chunks_in_any_order_make_a_tiled_pyramid_of_the_same_ids(chunks, tmp_path: Path) -> None:
    whole, committed = chunks
    with writer(tmp_path, ("ome-tiff",)) as slide:
        for chunk in committed:
            slide.write(chunk)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_labels.ome.tif"]  # no scratch zarr left
    with tifffile.TiffFile(tmp_path / "s_labels.ome.tif") as tif:
        assert tif.is_ome and len(tif.series) == 1
        levels = tif.series[0].levels
        assert [level.shape for level in levels] == [(1100, 1300), (550, 650)]
        for k, level in enumerate(levels):
            pixels = level.asarray()
            assert pixels.dtype == np.uint32
            np.testing.assert_array_equal(pixels, whole[:: 2**k, :: 2**k])  # never interpolated
        page = levels[0].keyframe
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (512, 512)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and len(page.subifds) == 1
        pixels_meta = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert pixels_meta["PhysicalSizeX"] == pixels_meta["PhysicalSizeY"] == MPP
        assert pixels_meta["PhysicalSizeXUnit"] == "µm" and pixels_meta["Type"] == "uint32"
        # The resolution tags agree, level by level, for readers that ignore the OME-XML.
        for k, level in enumerate(levels):
            x_per_cm = level.keyframe.get_resolution(tifffile.RESUNIT.CENTIMETER)[0]
            assert 1e4 / x_per_cm == pytest.approx(MPP * 2**k, rel=1e-6)


def test_an_error_while_writing_leaves_nothing(chunks, tmp_path: Path) -> None:
    _, committed = chunks
    with pytest.raises(RuntimeError, match="worker lost"), writer(tmp_path, ("ome-tiff", "csv")) as slide:
        slide.write(committed[0])
        assert (tmp_path / ".s_labels.ome.tif.zarr.part").is_dir()  # the scratch zarr, a .part name
        raise RuntimeError("worker lost")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_finishing_leaves_nothing(chunks, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The OME-TIFF is written at close (after the zarr's pyramid): a full disk then removes every
    temporary output, the zarr's and the finished ones' included."""
    _, committed = chunks

    def full_disk(path: Path, *args: object) -> None:
        Path(path).write_bytes(b"II*\0")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(slides, "write_label_ome_tiff", full_disk)
    with pytest.raises(OSError, match="No space"), writer(tmp_path, ("zarr", "ome-tiff", "csv")) as slide:
        for chunk in committed:
            slide.write(chunk)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_run_leaves_only_part_names_that_remove_partials_clears(chunks, tmp_path: Path) -> None:
    _, committed = chunks
    slide = writer(tmp_path, ("ome-tiff", "parquet"))
    for chunk in committed[:2]:
        slide.write(chunk)
    # Never closed, as after kill -9: what is there is hidden and temporary.
    assert all(p.name.startswith(".") and p.name.endswith(".part") for p in tmp_path.iterdir())
    removed = remove_partials(tmp_path, "s", sorted(SLIDE_SUFFIXES.values()))
    assert {p.name for p in removed} == {".s_labels.ome.tif.zarr.part", ".s_nuclei.parquet.part"}
    assert list(tmp_path.iterdir()) == []


def test_gzipped_geojson_is_the_same_bytes_on_every_run(chunks, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Reruns of the same slide give identical files (checksums, caches and diffs stay meaningful):
    the gzip header holds no write time, and it names the final file, not the temporary one."""
    import gzip
    import json
    import time

    _, committed = chunks
    outputs = []
    for run, clock in enumerate((1_000_000_000.0, 1_700_000_000.0)):
        monkeypatch.setattr(time, "time", lambda clock=clock: clock)
        out = tmp_path / str(run)
        out.mkdir()
        with writer(out, ("geojson.gz",)) as slide:
            for chunk in committed:
                slide.write(chunk)
        outputs.append((out / "s_nuclei.geojson.gz").read_bytes())
    assert outputs[0] == outputs[1]
    header = outputs[0]
    assert header[:2] == b"\x1f\x8b" and header[4:8] == b"\0\0\0\0"  # magic; MTIME 0
    assert header[10:header.index(b"\0", 10)] == b"s_nuclei.geojson"  # FNAME
    assert json.loads(gzip.decompress(outputs[0]))["type"] == "FeatureCollection"
