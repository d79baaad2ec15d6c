"""INPUT... expansion: files, folders and glob patterns into a sorted image list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleisam.data import read_rgb
from nucleisam.errors import NucleisamError
from nucleisam.predict.inputs import check_unique_stems, expand_inputs


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
