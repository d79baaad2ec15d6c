"""INPUT... expansion: files, folders and glob patterns into a sorted image list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleisam.data import read_rgb
from nucleisam.errors import NucleisamError
from nucleisam.predict.inputs import check_unique_stems, collect_inputs, expand_inputs


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    rgb = np.random.default_rng(0).integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "deep").mkdir()
    Image.fromarray(rgb).save(tmp_path / "a" / "b.png")
    Image.fromarray(rgb).save(tmp_path / "a" / "a.JPG")
    tifffile.imwrite(tmp_path / "a" / "c.tif", rgb, photometric="rgb", tile=(16, 16), bigtiff=True)
    Image.fromarray(rgb).save(tmp_path / "a" / "deep" / "d.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    return tmp_path


def test_folder_file_and_glob_expand_sorted_without_duplicates(image_tree: Path) -> None:
    folder = image_tree / "a"
    paths = expand_inputs([str(folder / "b.png"), folder, str(image_tree / "**" / "*.png")])
    assert [p.relative_to(image_tree).as_posix() for p in paths] == ["a/a.JPG", "a/b.png", "a/c.tif",
                                                                     "a/deep/d.png"]
    # Every listed file reads as RGB, the tiled BigTIFF included.
    assert all(read_rgb(p).shape == (40, 30, 3) for p in paths)


def test_nothing_matched_is_a_clear_error(image_tree: Path) -> None:
    with pytest.raises(NucleisamError, match=r"pattern .*\*\.bmp matches no images"):
        expand_inputs([str(image_tree / "*.bmp")])
    with pytest.raises(NucleisamError, match=r"INPUT .*deep2 not found"):
        expand_inputs([str(image_tree / "a" / "deep2")])
    (image_tree / "empty").mkdir()
    with pytest.raises(NucleisamError, match=r"folder .*empty holds no images"):
        expand_inputs([image_tree / "empty"])
    with pytest.raises(NucleisamError, match=r"notes\.txt is not a supported image"):
        expand_inputs([image_tree / "a" / "notes.txt"])
    with pytest.raises(NucleisamError, match="no INPUT"):
        expand_inputs([])


def test_same_stem_in_two_folders_is_refused(image_tree: Path) -> None:
    (image_tree / "b").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image_tree / "b" / "b.png")
    paths = expand_inputs([image_tree / "a", image_tree / "b"])
    with pytest.raises(NucleisamError, match=r"share the name 'b'.*\(out\)"):
        check_unique_stems(paths)
    check_unique_stems(expand_inputs([image_tree / "a"]))


def _save(path: Path, rgb: np.ndarray) -> Path:
    if path.suffix == ".png":
        Image.fromarray(rgb).save(path)
    else:
        tifffile.imwrite(path, rgb, photometric="rgb")
    return path


def test_earlier_outputs_in_a_folder_are_left_out_only_beside_their_input(image_tree: Path) -> None:
    """Every image-like output name (label TIFF, OME-TIFF labels, overlay, tissue) next to the image
    it came from is left out; the same names with no such image stay inputs (a user's own files)."""
    from nucleisam.batch import own_output_suffixes

    suffixes = own_output_suffixes()
    assert sorted(suffixes) == ["_labels.ome.tif", "_labels.tif", "_overlay.png", "_tissue.png"]
    folder = image_tree / "a"
    rgb = read_rgb(folder / "b.png")
    ours = [_save(folder / f"b{suffix}", rgb) for suffix in suffixes]
    theirs = [_save(folder / f"scan{suffix}", rgb) for suffix in ("_overlay.png", "_labels.tif")]
    found = collect_inputs([folder], output_suffixes=suffixes)
    assert found.left_out == sorted(ours, key=lambda p: p.name)
    assert [p.name for p in found.paths] == ["a.JPG", "b.png", "c.tif", "scan_labels.tif", "scan_overlay.png"]
    # A glob pattern is expanded by the same rule; a file named explicitly is taken as given.
    found = collect_inputs([str(folder / "*.png"), folder / "b_overlay.png"], output_suffixes=suffixes)
    assert [p.name for p in found.paths] == ["b.png", "b_overlay.png", "scan_overlay.png"]
    assert [p.name for p in found.left_out] == ["b_tissue.png"]
    # Without the suffixes (the plain Python API) nothing is left out.
    assert expand_inputs([folder]) == sorted([folder / "a.JPG", folder / "b.png", folder / "c.tif", *ours,
                                              *theirs], key=lambda p: p.name)


def test_a_manifest_row_marks_outputs_whose_input_is_elsewhere(image_tree: Path) -> None:
    """An output folder (``--out`` elsewhere) has no input images, but its manifest names them."""
    from nucleisam.batch import own_output_suffixes

    out = image_tree / "out"
    out.mkdir()
    rgb = read_rgb(image_tree / "a" / "b.png")
    _save(out / "b_overlay.png", rgb)
    _save(out / "slide_labels.ome.tif", rgb)
    _save(out / "other_overlay.png", rgb)
    # Without the manifest nothing says these are ours: all three are inputs.
    assert len(collect_inputs([out], output_suffixes=own_output_suffixes()).paths) == 3
    rows = f"{image_tree / 'a' / 'b.png'},done\n/x/slide.ome.tif,done\n"
    (out / "manifest.csv").write_text(f"input,status\n{rows}")
    found = collect_inputs([out], output_suffixes=own_output_suffixes())
    assert [p.name for p in found.paths] == ["other_overlay.png"]
    assert [p.name for p in found.left_out] == ["b_overlay.png", "slide_labels.ome.tif"]
    (out / "other_overlay.png").unlink()
    with pytest.raises(NucleisamError, match=r"folder .*out holds only outputs of an earlier nucleisam run "
                                             r"\(2 files such as b_overlay\.png\); name the files"):
        collect_inputs([out], output_suffixes=own_output_suffixes())
    # A CSV that is not a manifest of ours (no status column) marks nothing.
    (out / "manifest.csv").write_text("input\nb.png\nslide.ome.tif\n")
    assert len(collect_inputs([out], output_suffixes=own_output_suffixes()).paths) == 2
