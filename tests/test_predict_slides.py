"""Streaming slide inference: chunked results equal whole-image tiling, in any chunk size and any
completion order; the slide path of ``nucleisam predict`` equals the in-memory path on the same pixels;
tissue masks skip tiles; resampling to the method's resolution; Dask workers; slide outputs read back."""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from PIL import Image

from conftest import save_random_adapter
from nucleisam.cli import main
from nucleisam.data.slides import ArraySlide
from nucleisam.predict.assemble import SLIDE_COLUMNS, SlideAssembler
from nucleisam.predict.distributed import MethodSpec
from nucleisam.predict.slide import (
    SlideJob,
    plan_chunks,
    read_working_region,
    segment_chunk,
    slide_geometry,
    tissue_tiles,
)
from nucleisam.predict.tiling import TileGrid, predict_tiled
from slides_helpers import sample_tiles, slide_canvas, write_slide
from synthetic_nuclei import distance_watershed, synthetic_nuclei, threshold_maps


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label maps hold the same instances, whatever their ids."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def zarr_labels(path: Path) -> np.ndarray:
    return zarr.open_group(path, mode="r")["0"][:]


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """1024×1280 px of synthetic nuclei (about 1,700) at 0.25 µm/px."""
    return synthetic_nuclei(1024, 1280, seed=7)[0]


def assemble_chunks(image: np.ndarray, grid: TileGrid, chunk_tiles: int,
                    mask: np.ndarray | None = None) -> tuple[np.ndarray, list[int], int]:
    """Segment ``image`` chunk by chunk (only tiles touching ``mask``), commit the results in a
    shuffled order; returns the labels, the ids in commit order and the tiles run."""
    slide = ArraySlide(image, mpp=0.25)
    geometry = slide_geometry(slide, 0, 1.0)
    has_tissue = tissue_tiles(grid, mask)
    run = None if mask is None else has_tissue.reshape(len(grid.origins_y), len(grid.origins_x))
    chunks = plan_chunks(grid, has_tissue, chunk_tiles)
    job = SlideJob("<array>", None, geometry, grid, chunk_tiles, MethodSpec("classical", tile=grid.tile), run)
    results = [segment_chunk(job, chunk, read_working_region(slide, geometry, *chunk.region),
                             distance_watershed, threshold_maps, 4) for chunk in chunks]
    random.Random(chunk_tiles).shuffle(results)
    labels = np.zeros(image.shape[:2], dtype=np.uint32)
    ids: list[int] = []

    def emit(committed) -> None:
        y0, x0, y1, x1 = committed.region
        labels[y0:y1, x0:x1] = committed.labels
        ids.extend(committed.table["id"].tolist())

    assembler = SlideAssembler(geometry, grid, chunks, chunk_tiles, emit)
    for result in results:
        assembler.add(result)
    assert assembler.done
    return labels.astype(np.int64), ids, sum(result.n_tiles for result in results)


def test_chunks_in_any_order_equal_whole_image_tiling() -> None:
    """Every nucleus kept once and whole across chunk borders, whatever the chunk size and the order
    results arrive in; ids run 1..n in chunk order; no tile runs twice."""
    image, _ = synthetic_nuclei(620, 700, seed=4)
    whole = predict_tiled(image, label_fn=distance_watershed, map_fn=threshold_maps, tile=192, overlap=48)
    grid = TileGrid.for_image(620, 700, tile=192, overlap=48)
    for chunk_tiles in (1, 2):
        labels, ids, tiles = assemble_chunks(image, grid, chunk_tiles)
        assert same_partition(whole.labels, labels), chunk_tiles
        assert ids == list(range(1, whole.n_instances + 1)) and tiles == len(grid)


def test_skipped_tiles_do_not_make_results_depend_on_the_chunk_size() -> None:
    """With tiles skipped (no tissue), a nucleus is kept by the most central tile that runs: chunks of
    any size give what one chunk over the whole grid gives, and nothing outside the run tiles."""
    image, _ = synthetic_nuclei(620, 700, seed=5)
    grid = TileGrid.for_image(620, 700, tile=192, overlap=48)
    mask = np.ones((31, 35), dtype=bool)
    mask[6:24, 5:27] = False  # a hole in the middle of the tissue (20 px per mask pixel)
    mask[:, 25:] = False
    reference, _, tiles = assemble_chunks(image, grid, 10, mask)
    assert tiles <= len(grid) - 6 and reference.max() > 200
    for chunk_tiles in (1, 2):
        labels, _, _ = assemble_chunks(image, grid, chunk_tiles, mask)
        assert same_partition(reference, labels), chunk_tiles


def test_slide_path_equals_in_memory_path_on_the_same_pixels(scene: np.ndarray, tmp_path: Path) -> None:
    scene = scene[:768, :1024]
    Image.fromarray(scene).save(tmp_path / "s.png")
    write_slide(tmp_path / "s.tif", scene, mpp=0.25, factors=(1, 2, 4))
    common = ["--method", "classical", "--tile", "256", "--overlap", "64"]
    assert main(["predict", str(tmp_path / "s.png"), "--out", str(tmp_path / "mem"), "--mpp", "0.25",
                 *common]) == 0
    assert main(["predict", str(tmp_path / "s.tif"), "--out", str(tmp_path / "slide"), "--tissue", "none",
                 "--chunk-tiles", "2", "--formats", "parquet,csv,geojson.gz,zarr,overlay,tissue",
                 *common]) == 0
    slide = tmp_path / "slide"
    assert sorted(p.name for p in slide.iterdir()) == [
        "manifest.csv", "s_labels.zarr", "s_nuclei.csv", "s_nuclei.geojson.gz", "s_nuclei.parquet",
        "s_overlay.png", "s_tissue.png"]
    memory_labels = tifffile.imread(tmp_path / "mem" / "s_labels.tif").astype(np.int64)
    slide_labels = zarr_labels(slide / "s_labels.zarr")
    assert slide_labels.dtype == np.uint32 and same_partition(memory_labels, slide_labels.astype(np.int64))

    memory_rows, slide_rows = read_csv(tmp_path / "mem" / "s_nuclei.csv"), read_csv(slide / "s_nuclei.csv")
    assert len(slide_rows) == len(memory_rows) > 700
    key = lambda row: (float(row["centroid_y"]), float(row["centroid_x"]))  # noqa: E731
    for mine, theirs in zip(sorted(slide_rows, key=key), sorted(memory_rows, key=key), strict=True):
        for column in theirs:
            if column != "id":
                assert float(mine[column]) == pytest.approx(float(theirs[column]), abs=1e-6), column
        assert float(mine["centroid_x_um"]) == pytest.approx(0.25 * float(mine["centroid_x"]), abs=1e-5)
    assert [int(r["id"]) for r in slide_rows] == list(range(1, len(slide_rows) + 1))

    table = pq.read_table(slide / "s_nuclei.parquet")
    assert table.column_names == list(SLIDE_COLUMNS) and table.num_rows == len(slide_rows)
    np.testing.assert_allclose(table.column("area_um2").to_numpy(),
                               [float(r["area_um2"]) for r in slide_rows], atol=1e-6)
    with gzip.open(slide / "s_nuclei.geojson.gz", "rt") as handle:
        features = json.load(handle)["features"]
    assert len(features) == len(slide_rows) and features[0]["properties"]["objectType"] == "detection"
    # The ring of nucleus 1 encloses exactly its pixels (pixel centres inside the polygon).
    from skimage.draw import polygon as draw_polygon

    ring = np.array(features[0]["geometry"]["coordinates"][0])
    rows, cols = draw_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=slide_labels.shape)
    assert set(np.unique(slide_labels[rows, cols])) == {1}
    assert len(rows) == int(float(slide_rows[0]["area_px"]))

    attrs = zarr.open_group(slide / "s_labels.zarr", mode="r").attrs.asdict()
    assert attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.25, 0.25]
    assert [d["path"] for d in attrs["multiscales"][0]["datasets"]] == ["0"]  # fits one 1024² chunk
    assert "image-label" in attrs
    assert Image.open(slide / "s_overlay.png").size == (1024, 768)  # the thumbnail (≤ 2048 px)


def test_ome_tiff_labels_are_the_zarr_labels_as_a_pyramid(sample_root: Path, tmp_path: Path) -> None:
    """Real H&E tiles on a 1000×1300 px slide scanned at 0.24 µm/px (read as-is for the classical
    method's 0.25): the OME-TIFF's level 0 is the zarr's labels exactly, holding the Parquet's ids; its
    SubIFD level is every second pixel; PhysicalSizeX is the working µm/px, the zarr's scale. Asked
    for alone, the same image comes from a scratch zarr that is gone afterwards."""
    tiles = sample_tiles(sample_root, 5)
    canvas = slide_canvas(tiles, grid=(3, 2), cells=[(0, 0), (1, 0), (2, 0), (0, 1), (2, 1)]).image
    write_slide(tmp_path / "he.tif", canvas[:1000, :1300], mpp=0.24, factors=(1, 2))
    args = ["predict", str(tmp_path / "he.tif"), "--method", "classical", "--tissue", "none", "--tile", "512",
            "--chunk-tiles", "1"]
    assert main([*args, "--out", str(tmp_path / "both"), "--formats", "zarr,ome-tiff,parquet"]) == 0
    assert main([*args, "--out", str(tmp_path / "alone"), "--formats", "ome-tiff"]) == 0
    assert sorted(p.name for p in (tmp_path / "alone").iterdir()) == ["he_labels.ome.tif", "manifest.csv"]

    group = zarr.open_group(tmp_path / "both" / "he_labels.zarr", mode="r")
    zarr_scale = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    ids = pq.read_table(tmp_path / "both" / "he_nuclei.parquet").column("id").to_numpy()
    for folder in ("both", "alone"):
        with tifffile.TiffFile(tmp_path / folder / "he_labels.ome.tif") as tif:
            assert tif.is_ome
            levels = [level.asarray() for level in tif.series[0].levels]
            pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert [level.shape for level in levels] == [(1000, 1300), (500, 650)]
        assert levels[0].dtype == np.uint32
        np.testing.assert_array_equal(levels[0], group["0"][:])
        np.testing.assert_array_equal(levels[1], levels[0][::2, ::2])
        np.testing.assert_array_equal(levels[1], group["1"][:])
        assert set(np.unique(levels[0])) - {0} == set(ids.tolist()) and len(ids) > 300
        assert pixels["PhysicalSizeX"] == pixels["PhysicalSizeY"] == pytest.approx(0.24)
        assert [pixels["PhysicalSizeX"]] * 2 == pytest.approx(zarr_scale)


@pytest.mark.parametrize("tissue", ["auto", "mask"])
def test_tissue_detection_and_masks_skip_tiles(tissue: str, scene: np.ndarray, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Only tiles touching tissue are read and segmented: tissue detected left of 1024 px on a slide
    whose right half is glass, or a user's mask (any size) marking the left 896 px of a slide that is
    tissue everywhere. Tiles start at x = 0, 384, 768, 1152, 1536: the last two are skipped."""
    canvas = np.full((512, 2048, 3), 255, dtype=np.uint8)
    canvas[:, :1024] = scene[:512, :1024]
    option = "auto"
    if tissue == "mask":
        canvas[:, 1024:] = scene[:512, :1024]
        mask = np.zeros((32, 128), dtype=np.uint8)
        mask[:, :56] = 255
        Image.fromarray(mask).save(tmp_path / "mask.png")
        option = str(tmp_path / "mask.png")
    write_slide(tmp_path / "half.tif", canvas, mpp=0.25, factors=(1, 4))
    assert main(["predict", str(tmp_path / "half.tif"), "--out", str(tmp_path / "out"), "--method",
                 "classical", "--tissue", option, "--tile", "512", "--formats", "csv,zarr,tissue"]) == 0
    assert "3 of 5 tiles with tissue" in capsys.readouterr().out
    labels = zarr_labels(tmp_path / "out" / "half_labels.zarr")
    assert labels[:, :1024].max() > 0 and labels[:, 1280:].max() == 0
    # 2048 px wide: a second pyramid level, every second pixel of the first (ids stay ids).
    group = zarr.open_group(tmp_path / "out" / "half_labels.zarr", mode="r")
    np.testing.assert_array_equal(group["1"][:], labels[::2, ::2])
    assert group.attrs["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    assert max(float(r["bbox_x1"]) for r in read_csv(tmp_path / "out" / "half_nuclei.csv")) <= 1280
    saved = np.asarray(Image.open(tmp_path / "out" / "half_tissue.png"))
    assert saved.shape == (512, 2048) and saved[:, :1024].any() and not saved[:, 1100:].any()


def test_mpp_mismatch_resamples_to_the_method_resolution(scene: np.ndarray, tmp_path: Path) -> None:
    """A 0.2 µm/px scan of the same scene is read at 0.25 µm/px: the same nuclei, at the same places
    in µm, with level-0 pixel sizes 1.25² times larger."""
    crop = scene[:512, :640]
    write_slide(tmp_path / "native.tif", crop, mpp=0.25, factors=(1, 2))
    finer = np.asarray(Image.fromarray(crop).resize((800, 640), Image.Resampling.BICUBIC))
    write_slide(tmp_path / "fine.tif", finer, mpp=0.2, factors=(1, 2))
    common = ["--method", "classical", "--tissue", "none", "--formats", "csv", "--tile", "256"]
    assert main(["predict", str(tmp_path / "native.tif"), str(tmp_path / "fine.tif"), "--out",
                 str(tmp_path / "out"), *common]) == 0
    native = read_csv(tmp_path / "out" / "native_nuclei.csv")
    fine = read_csv(tmp_path / "out" / "fine_nuclei.csv")
    assert abs(len(fine) - len(native)) <= 0.05 * len(native)
    native_area = np.median([float(r["area_um2"]) for r in native])
    assert np.median([float(r["area_um2"]) for r in fine]) == pytest.approx(native_area, rel=0.1)
    # Level-0 pixels of the finer scan are smaller: the same µm area is 1.5625× more pixels.
    assert np.median([float(r["area_px"]) for r in fine]) == pytest.approx(native_area / 0.2**2, rel=0.1)
    points = np.array([[float(r["centroid_x_um"]), float(r["centroid_y_um"])] for r in native])
    for row in fine[::25]:
        distance = np.hypot(*(points - [float(row["centroid_x_um"]), float(row["centroid_y_um"])]).T).min()
        assert distance < 1.0  # µm


def test_unknown_mpp_is_a_one_line_error_naming_the_slide(scene: np.ndarray, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_slide(tmp_path / "bare.tif", scene[:512, :512], mpp=None, factors=(1, 2))
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "bare.tif"), "--out", str(out), "--method", "classical",
                 "--tissue", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bare.tif" in err and "--mpp" in err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv"]
    assert main(["predict", str(tmp_path / "bare.tif"), "--out", str(out), "--method", "classical",
                 "--tissue", "none", "--mpp", "0.25", "--formats", "csv"]) == 0
    assert len(read_csv(out / "bare_nuclei.csv")) > 100


@pytest.mark.slow
def test_two_dask_workers_give_the_same_outputs_as_one_process(scene: np.ndarray, tmp_path: Path) -> None:
    write_slide(tmp_path / "s.tif", scene[:512, :768], mpp=0.25, factors=(1, 2))
    args = ["predict", str(tmp_path / "s.tif"), "--method", "classical", "--tissue", "none", "--tile", "256",
            "--chunk-tiles", "1", "--formats", "csv,geojson,zarr"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    for name in ("s_nuclei.csv", "s_nuclei.geojson"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    np.testing.assert_array_equal(zarr_labels(tmp_path / "one" / "s_labels.zarr"),
                                  zarr_labels(tmp_path / "two" / "s_labels.zarr"))


def test_model_slide_path_equals_in_memory_path(tmp_path: Path) -> None:
    """A randomly initialised adapter (input 256) on a small slide: the same nuclei either way."""
    import torch

    adapter = save_random_adapter(tmp_path / "adapter.safetensors")
    image, _ = synthetic_nuclei(256, 400, seed=3)
    Image.fromarray(image).save(tmp_path / "m.png")
    write_slide(tmp_path / "m.tif", image, mpp=0.25, factors=(1, 2))
    common = ["--adapter", str(adapter), "--tile", "256", "--overlap", "32", "--batch-size", "2"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["predict", str(tmp_path / "m.png"), "--out", str(tmp_path / "mem"), *common]) == 0
        assert main(["predict", str(tmp_path / "m.tif"), "--out", str(tmp_path / "slide"), "--tissue", "none",
                     "--chunk-tiles", "1", "--formats", "zarr", *common]) == 0
    finally:
        torch.set_num_threads(threads)
    memory_labels = tifffile.imread(tmp_path / "mem" / "m_labels.tif").astype(np.int64)
    assert same_partition(memory_labels, zarr_labels(tmp_path / "slide" / "m_labels.zarr").astype(np.int64))
