"""Finding and pairing samples: NuInsSeg layout, plain folders, XML; problem reports."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import requires_shared_data
from nucleisam.data import (
    count_instances,
    load_folders,
    load_nuinsseg,
    open_dataset,
    parse_organ_folder,
    read_label_map,
    summarize,
)
from nucleisam.errors import NucleisamError

SAMPLE_STEMS = [f"human_spleen_{n}" for n in ("01", "05", "13", "17", "25", "28")]



def test_bundled_sample_pairs_every_tile(sample_root: Path) -> None:
    dataset = load_nuinsseg(sample_root)
    assert dataset.problems == []
    assert dataset.stems == SAMPLE_STEMS
    organ_dir = sample_root / "human spleen"
    for sample in dataset:
        assert (sample.species, sample.organ, sample.group) == ("human", "spleen", "human spleen")
        assert sample.image_path == organ_dir / "tissue images" / f"{sample.stem}.png"
        assert sample.labels_path == organ_dir / "label masks modify" / f"{sample.stem}.tif"
        assert sample.vague_path == organ_dir / "vague areas" / "mask binary" / f"{sample.stem}.png"
    sample = dataset[1]
    image, labels, vague = sample.load_image(), sample.load_labels(), sample.load_vague()
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert labels.shape == (512, 512) and labels.dtype == np.int32
    assert vague is not None and vague.dtype == np.bool_ and vague.any()


def test_organ_folder_itself_can_be_the_root(sample_root: Path) -> None:
    assert load_nuinsseg(sample_root / "human spleen").stems == SAMPLE_STEMS


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("human spleen", ("human", "spleen")),
        ("human_spleen", ("human", "spleen")),
        ("mouse muscle_tibia", ("mouse", "muscle tibia")),
        ("Mouse  Fat (white and brown)_subscapula", ("mouse", "fat (white and brown) subscapula")),
        ("melanoma", ("unknown", "melanoma")),
    ],
)
def test_species_and_organ_from_folder_name(name: str, expected: tuple[str, str]) -> None:
    assert parse_organ_folder(name) == expected


@requires_shared_data
def test_shared_spleen_has_34_tiles_and_3286_nuclei(shared_nuinsseg: Path) -> None:
    dataset = load_nuinsseg(shared_nuinsseg)
    assert dataset.problems == []
    assert len(dataset) == 34
    assert dataset.stems == sorted(dataset.stems)
    assert sum(count_instances(s.load_labels()) for s in dataset) == 3286
    summary = summarize(dataset)
    assert (summary.images, summary.nuclei) == (34, 3286)
    assert summary.organs["human spleen"].images == 34
    # Every shared tile has a vague mask with some pixels; 18 of them cover more than 1% of the tile
    # (the others hold one small placeholder blob), matching the 18 tiles with vague areas in DESIGN.md.
    assert summary.tiles_with_vague_areas == 34
    assert summary.tiles_with_substantial_vague_areas == 18


@requires_shared_data
def test_summed_label_masks_are_never_used(shared_nuinsseg: Path, tmp_path: Path) -> None:
    """'label masks' stores sums of overlapping ids; without 'label masks modify' nothing is paired."""
    organ = tmp_path / "human spleen"
    shutil.copytree(shared_nuinsseg / "human spleen" / "tissue images", organ / "tissue images")
    shutil.copytree(shared_nuinsseg / "human spleen" / "label masks", organ / "label masks")
    dataset = load_nuinsseg(tmp_path)
    assert len(dataset) == 0
    assert any("label masks modify" in p and "sums" in p for p in dataset.problems)
    with pytest.raises(NucleisamError, match="label masks modify"):
        load_nuinsseg(tmp_path, strict=True)


def test_underscore_layout_and_mask_binary_vague(sample_copy: Path, tmp_path: Path) -> None:
    root = tmp_path / "underscored"
    source = sample_copy / "human spleen"
    organ = root / "human_spleen"
    shutil.copytree(source / "tissue images", organ / "tissue_images")
    shutil.copytree(source / "label masks modify", organ / "label_masks_modify")
    shutil.copytree(source / "vague areas" / "mask binary", organ / "mask binary_vague")
    dataset = load_nuinsseg(root)
    assert dataset.problems == [] and dataset.stems == SAMPLE_STEMS
    assert all(s.vague_path is not None and s.vague_path.parent.name == "mask binary_vague"
               for s in dataset)
    assert dataset[0].group == "human spleen"


def test_problems_are_collected_and_strict_raises(sample_copy: Path) -> None:
    organ = sample_copy / "human spleen"
    (organ / "label masks modify" / "human_spleen_01.tif").unlink()  # image without a mask
    (organ / "tissue images" / "human_spleen_05.png").unlink()  # mask without an image
    tifffile.imwrite(organ / "label masks modify" / "human_spleen_13.tif", np.zeros((256, 512), np.uint16))
    images = organ / "tissue images"
    shutil.copy(images / "human_spleen_17.png", images / "human_spleen_17.tif")  # duplicate stem
    (organ / "tissue images" / "human_spleen_25.png").write_text("not a png")  # corrupt image
    Image.fromarray(np.zeros((512, 512), np.uint8)).save(organ / "tissue images" / "human_spleen_28.png")

    dataset = load_nuinsseg(sample_copy)
    assert dataset.stems == ["human_spleen_17"]
    problems = "\n".join(dataset.problems)
    assert "image without a label mask" in problems and "human_spleen_01.png" in problems
    assert "label mask without an image" in problems and "human_spleen_05.tif" in problems
    assert "size mismatch" in problems and "human_spleen_13" in problems and "256x512" in problems
    assert "duplicate image stem 'human_spleen_17'" in problems
    assert "cannot read image" in problems and "human_spleen_25.png" in problems
    assert "grayscale" in problems and "human_spleen_28.png" in problems
    assert len(dataset.problems) == 6
    with pytest.raises(NucleisamError, match=r"6 problem\(s\)") as excinfo:
        load_nuinsseg(sample_copy, strict=True)
    assert "human_spleen_28.png" in str(excinfo.value)


def test_duplicate_stems_across_organ_folders(sample_copy: Path) -> None:
    shutil.copytree(sample_copy / "human spleen", sample_copy / "human_spleen")
    dataset = load_nuinsseg(sample_copy)
    assert dataset.stems == SAMPLE_STEMS
    assert len(dataset.problems) == 6 and all("duplicate stem" in p for p in dataset.problems)


@pytest.mark.parametrize("suffix", [".tif", ".png", ".npy"])
def test_folders_pair_by_stem_in_each_mask_format(sample_root: Path, tmp_path: Path, suffix: str) -> None:
    images, masks = tmp_path / "images", tmp_path / "instance masks"
    shutil.copytree(sample_root / "human spleen" / "tissue images", images)
    masks.mkdir()
    originals = {}
    for tif in sorted((sample_root / "human spleen" / "label masks modify").glob("*.tif")):
        labels = read_label_map(tif)
        originals[tif.stem] = labels
        if suffix == ".tif":
            shutil.copy(tif, masks / tif.name)
        elif suffix == ".png":
            Image.fromarray(labels.astype(np.uint16)).save(masks / f"{tif.stem}.png")
        else:
            np.save(masks / f"{tif.stem}.npy", labels)
    dataset = load_folders(images, masks)
    assert dataset.problems == [] and dataset.stems == SAMPLE_STEMS
    assert {s.organ for s in dataset} == {"unknown"}
    for sample in dataset:
        assert sample.vague_path is None and sample.load_vague() is None
        np.testing.assert_array_equal(sample.load_labels(), originals[sample.stem])
    assert open_dataset(images=images, masks=masks).stems == SAMPLE_STEMS


def test_folders_with_binary_masks(sample_root: Path, tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    shutil.copytree(sample_root / "human spleen" / "tissue images", images)
    masks.mkdir()
    for tif in sorted((sample_root / "human spleen" / "label masks modify").glob("*.tif")):
        Image.fromarray((read_label_map(tif) > 0).astype(np.uint8) * 255).save(masks / f"{tif.stem}.png")
    dataset = load_folders(images, masks)
    with pytest.raises(NucleisamError, match=r"human_spleen_01\.png.*binary mask"):
        dataset[0].load_labels()
    split = load_folders(images, masks, binary_masks=True)
    labels = split[0].load_labels()
    truth = read_label_map(sample_root / "human spleen" / "label masks modify" / "human_spleen_01.tif")
    np.testing.assert_array_equal(labels > 0, truth > 0)
    # Touching nuclei merge into one component, so there can only be fewer instances, never more.
    assert 0 < count_instances(labels) <= count_instances(truth)


def _polygon_xml(path: Path, squares: list[tuple[int, int, int]]) -> None:
    regions = []
    for number, (row, col, size) in enumerate(squares, start=1):
        corners = [(col - 0.5, row - 0.5), (col + size - 0.5, row - 0.5),
                   (col + size - 0.5, row + size - 0.5), (col - 0.5, row + size - 0.5)]
        vertices = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in corners)
        regions.append(f'<Region Id="{number}"><Vertices>{vertices}</Vertices></Region>')
    path.write_text(f"<Annotations><Annotation><Regions>{''.join(regions)}</Regions></Annotation></Annotations>")


def test_xml_annotations_next_to_images_or_in_masks_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    side_by_side = tmp_path / "monuseg"
    images, annotations = tmp_path / "Tissue Images", tmp_path / "Annotations"
    for folder in (side_by_side, images, annotations):
        folder.mkdir()
    for stem in ("TCGA-A", "TCGA-B"):
        rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
        tifffile.imwrite(side_by_side / f"{stem}.tif", rgb, photometric="rgb")
        tifffile.imwrite(images / f"{stem}.tif", rgb, photometric="rgb")
        _polygon_xml(side_by_side / f"{stem}.xml", [(2, 3, 5), (20, 30, 4)])
        _polygon_xml(annotations / f"{stem}.xml", [(2, 3, 5), (20, 30, 4)])
    for dataset in (open_dataset(side_by_side), load_folders(images, annotations)):
        assert dataset.problems == [] and dataset.stems == ["TCGA-A", "TCGA-B"]
        labels = dataset[0].load_labels()
        assert labels.shape == (40, 50)
        assert np.count_nonzero(labels == 1) == 25 and np.count_nonzero(labels == 2) == 16
        assert labels[2:7, 3:8].min() == 1


def test_open_dataset_rejects_ambiguous_or_unknown_inputs(sample_root: Path, tmp_path: Path) -> None:
    with pytest.raises(NucleisamError, match="not both"):
        open_dataset(sample_root, images=tmp_path)
    with pytest.raises(NucleisamError, match="no data given"):
        open_dataset()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NucleisamError, match="not in a layout"):
        open_dataset(tmp_path)
