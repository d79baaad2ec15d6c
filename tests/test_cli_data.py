"""`nucleisam data info` / `nucleisam data folds`, including every bad input of issue 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import requires_shared_data, run_cli
from nucleisam.data import FoldManifest, count_instances, load_nuinsseg, make_folds, read_label_map
from nucleisam.errors import NucleisamError


def _organ(root: Path) -> Path:
    return root / "human spleen"


def test_info_on_bundled_sample(sample_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nuclei = sum(count_instances(s.load_labels()) for s in load_nuinsseg(sample_root))
    code, out, err = run_cli(["data", "info", "--data", str(sample_root)], capsys)
    assert code == 0 and err == ""
    assert "images:   6\n" in out and f"nuclei:   {nuclei:,}\n" in out
    assert "human spleen" in out and "problems: none" in out
    assert ("\nresolution: 0.25 µm/px for a run (NuInsSeg's, by default); the images record no resolution "
            "(or only an image editor's, such as 72 dpi)\nproblems" in out)
    code, out, _ = run_cli(["data", "info", "--data", str(sample_root), "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and (data["images"], data["nuclei"]) == (6, nuclei)
    assert data["organs"] == {"human spleen": {"images": 6, "nuclei": nuclei}}
    assert data["tiles_with_vague_areas"] == 6 and data["problems"] == []
    # The NuInsSeg PNGs record no resolution: a run takes NuInsSeg's 0.25 µm/px, without a warning.
    assert data["resolution"] == {
        "recorded": {"state": "none", "images": 6, "images_recording": 0, "mpp": None, "min": None,
                     "max": None,
                     "text": "the images record no resolution (or only an image editor's, such as 72 dpi)"},
        "mpp": 0.25, "source": "NuInsSeg's, by default", "warning": None}


@requires_shared_data
def test_info_on_shared_spleen_reports_34_images_and_3286_nuclei(
    shared_nuinsseg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["data", "info", "--data", str(shared_nuinsseg)], capsys)
    assert code == 0
    assert "images:   34\n" in out and "nuclei:   3,286\n" in out
    assert "tiles with vague areas: 34 (18 with more than 1% of the tile vague)" in out
    argv = ["data", "info", "--data", str(shared_nuinsseg / "human spleen"), "--json", "--strict"]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and (json.loads(out)["images"], json.loads(out)["nuclei"]) == (34, 3286)


def test_info_on_image_and_mask_folders(sample_root: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    shutil.copytree(_organ(sample_root) / "tissue images", images)
    masks.mkdir()
    for tif in (_organ(sample_root) / "label masks modify").glob("*.tif"):
        Image.fromarray((read_label_map(tif) > 0).astype(np.uint8)).save(masks / f"{tif.stem}.png")
    code, _, err = run_cli(["data", "info", "--images", str(images), "--masks", str(masks)], capsys)
    assert code == 2 and "binary mask" in err and "--binary-masks" in err
    code, out, _ = run_cli(["data", "info", "--images", str(images), "--masks", str(masks), "--binary-masks",
                            "--json"], capsys)
    assert code == 0 and json.loads(out)["images"] == 6 and json.loads(out)["organs"].keys() == {"unknown"}


def test_info_reports_the_resolution_the_images_record_and_a_run_would_use(
    sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bundled tiles as TIFFs tagged 0.5 µm/px (a 20x scan), with their label maps."""
    images = tmp_path / "images"
    images.mkdir()
    per_cm = 1e4 / 0.5
    for png in sorted((_organ(sample_root) / "tissue images").glob("*.png")):
        tifffile.imwrite(images / f"{png.stem}.tif", np.asarray(Image.open(png).convert("RGB")),
                         photometric="rgb", resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    masks = _organ(sample_root) / "label masks modify"
    args = ["data", "info", "--images", str(images), "--masks", str(masks)]
    code, out, err = run_cli(args, capsys)
    assert code == 0 and err == ""
    assert "\nresolution: 0.5 µm/px for a run (recorded in the images); all 6 images record 0.5 µm/px\n" \
        in out
    assert "warning" not in out

    # --mpp as a run would take it: it wins, and a clash with what every image records is warned.
    code, out, _ = run_cli([*args, "--mpp", "0.25", "--json"], capsys)
    resolution = json.loads(out)["resolution"]
    assert code == 0 and (resolution["mpp"], resolution["source"]) == (0.25, "data.mpp")
    assert (resolution["recorded"]["state"], resolution["recorded"]["mpp"]) == ("agree", 0.5)
    assert "data.mpp (--mpp) is 0.25 µm/px but every image records 0.5 µm/px" in resolution["warning"]
    code, _, err = run_cli([*args, "--mpp", "-1"], capsys)
    assert code == 2 and "data.mpp" in err and "between 0.01 and 50" in err

    # One image at 0.25 µm/px: they disagree, so a run would fall back to NuInsSeg's, with a warning.
    first = sorted(images.iterdir())[0]
    tifffile.imwrite(first, tifffile.imread(first), photometric="rgb", resolution=(4e4, 4e4),
                     resolutionunit="CENTIMETER")
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    assert ("\nresolution: 0.25 µm/px for a run (NuInsSeg's, by default); the images record different "
            "resolutions (0.25–0.5 µm/px)\n  warning: the images record different resolutions" in out)
    code, out, _ = run_cli([*args, "--json"], capsys)
    recorded = json.loads(out)["resolution"]["recorded"]
    assert (recorded["state"], recorded["min"], recorded["max"]) == ("differ", 0.25, 0.5)
    assert recorded["mpp"] is None


def test_folds_writes_the_manifest(sample_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = sample_copy / "out dir" / "folds 5.json"
    code, out, err = run_cli(["data", "folds", "--data", str(sample_copy), "--k", "3", "--seed", "19",
                              "--out", str(out_file)], capsys)
    assert code == 0 and err == ""
    assert "fold 2: train" in out and str(out_file) in out
    samples = load_nuinsseg(sample_copy).samples
    assert FoldManifest.load(out_file, samples=samples) == make_folds(samples, k=3, seed=19)


@requires_shared_data
def test_folds_on_shared_spleen(
    shared_nuinsseg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["data", "folds", "--data", str(shared_nuinsseg), "--k", "5", "--seed", "19",
                            "--val-fraction", "0.125", "--out", str(tmp_path / "folds.json")], capsys)
    assert code == 0 and "over 34 images" in out
    manifest = FoldManifest.load(tmp_path / "folds.json")
    assert sorted(len(f.test) for f in manifest.folds) == [6, 7, 7, 7, 7]


# ---- bad input: a clear message naming the file or option, exit code 2, nothing written ----------


def _assert_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert err.startswith("nucleisam: error: ")
    for needle in needles:
        assert needle in err, (needle, err)


def test_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no such folder"
    code, out, err = run_cli(["data", "info", "--data", str(missing)], capsys)
    _assert_error(code, err, "not found", str(missing))
    assert out == ""
    argv = ["data", "folds", "--data", str(missing), "--out", str(tmp_path / "f.json")]
    code, _, err = run_cli(argv, capsys)
    _assert_error(code, err, str(missing))
    assert not (tmp_path / "f.json").exists()


def test_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty folder"
    empty.mkdir()
    code, _, err = run_cli(["data", "info", "--data", str(empty)], capsys)
    _assert_error(code, err, str(empty), "empty")
    organ = empty / "human spleen" / "tissue images"
    organ.mkdir(parents=True)
    code, _, err = run_cli(["data", "info", "--data", str(empty)], capsys)
    _assert_error(code, err, "no images", "tissue images")


def test_non_image_file_with_image_extension(sample_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (_organ(sample_copy) / "tissue images" / "human_spleen_13.png").write_text("this is not a PNG")
    code, out, err = run_cli(["data", "info", "--data", str(sample_copy), "--strict"], capsys)
    _assert_error(code, err, "human_spleen_13.png", "cannot read image")
    assert out == ""
    code, out, _ = run_cli(["data", "info", "--data", str(sample_copy)], capsys)
    assert code == 0 and "images:   5" in out and "human_spleen_13.png" in out


def test_truncated_image(sample_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A half-written PNG has a readable header, so pairing accepts it; data info decodes every file
    and lists it (left out of the counts), and --strict makes it an error."""
    path = _organ(sample_copy) / "tissue images" / "human_spleen_13.png"
    path.write_bytes(path.read_bytes()[:2000])
    sample = load_nuinsseg(sample_copy, strict=True).by_stem()["human_spleen_13"]
    with pytest.raises(NucleisamError, match=r"cannot read image .*human_spleen_13\.png"):
        sample.load_image()
    code, out, _ = run_cli(["data", "info", "--data", str(sample_copy)], capsys)
    assert code == 0 and "images:   5\n" in out and "problems: 1" in out and "human_spleen_13.png" in out
    code, out, err = run_cli(["data", "info", "--data", str(sample_copy), "--strict"], capsys)
    _assert_error(code, err, "1 problem(s)", "human_spleen_13.png")
    assert out == ""


def test_non_image_mask_file(sample_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (_organ(sample_copy) / "label masks modify" / "human_spleen_25.tif").write_text("no tiff here")
    code, _, err = run_cli(["data", "info", "--data", str(sample_copy), "--strict"], capsys)
    _assert_error(code, err, "human_spleen_25.tif")


def test_mask_of_another_size(sample_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tifffile.imwrite(_organ(sample_copy) / "label masks modify" / "human_spleen_05.tif",
                     np.ones((500, 512), np.uint16))
    code, _, err = run_cli(["data", "info", "--data", str(sample_copy), "--strict"], capsys)
    _assert_error(code, err, "size mismatch", "human_spleen_05.png", "human_spleen_05.tif", "500x512")
    out_file = tmp_path / "folds.json"
    argv = ["data", "folds", "--data", str(sample_copy), "--strict", "--out", str(out_file)]
    code, _, err = run_cli(argv, capsys)
    _assert_error(code, err, "size mismatch")
    assert not out_file.exists()


def test_float_masks(sample_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Whole-number ids stored as float32 (a common export) read as integers; fractional values are
    a problem listed by file, not the end of the command."""
    path = _organ(sample_copy) / "label masks modify" / "human_spleen_17.tif"
    labels = read_label_map(path)
    expected = json.loads(run_cli(["data", "info", "--data", str(sample_copy), "--json"], capsys)[1])
    tifffile.imwrite(path, labels.astype(np.float32))
    code, out, _ = run_cli(["data", "info", "--data", str(sample_copy), "--json"], capsys)
    assert code == 0 and json.loads(out) == expected
    tifffile.imwrite(path, labels.astype(np.float32) + 0.5)
    code, out, _ = run_cli(["data", "info", "--data", str(sample_copy)], capsys)
    assert code == 0 and "images:   5\n" in out and "human_spleen_17.tif" in out and "fractional" in out
    code, _, err = run_cli(["data", "info", "--data", str(sample_copy), "--strict"], capsys)
    _assert_error(code, err, "human_spleen_17.tif", "fractional")


def test_negative_ids(sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, masks = tmp_path / "image files", tmp_path / "label files"
    shutil.copytree(_organ(sample_root) / "tissue images", images)
    masks.mkdir()
    for tif in (_organ(sample_root) / "label masks modify").glob("*.tif"):
        labels = read_label_map(tif)
        if tif.stem == "human_spleen_28":
            labels[labels == labels.max()] = -3
        np.save(masks / f"{tif.stem}.npy", labels)
    code, out, _ = run_cli(["data", "info", "--images", str(images), "--masks", str(masks)], capsys)
    assert code == 0 and "images:   5\n" in out and "human_spleen_28.npy" in out and "negative ids" in out
    argv = ["data", "info", "--images", str(images), "--masks", str(masks), "--strict"]
    code, _, err = run_cli(argv, capsys)
    _assert_error(code, err, "human_spleen_28.npy", "negative ids")


def test_empty_xml_annotation_is_a_listed_problem(
    sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "monuseg"
    shutil.copytree(_organ(sample_root) / "tissue images", folder)
    for image in folder.glob("*.png"):
        (folder / f"{image.stem}.xml").write_text(
            '<Annotations><Annotation><Regions><Region Id="1"><Vertices><Vertex X="10" Y="10"/>'
            '<Vertex X="30" Y="10"/><Vertex X="30" Y="30"/></Vertices></Region></Regions></Annotation>'
            "</Annotations>"
        )
    (folder / "human_spleen_05.xml").write_bytes(b"")
    code, out, _ = run_cli(["data", "info", "--data", str(folder)], capsys)
    assert code == 0 and "images:   5\n" in out and "human_spleen_05.xml" in out
    code, _, err = run_cli(["data", "info", "--data", str(folder), "--strict"], capsys)
    _assert_error(code, err, "human_spleen_05.xml")


def test_grayscale_image(sample_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _organ(sample_copy) / "tissue images" / "human_spleen_01.png"
    Image.open(path).convert("L").save(path)
    code, _, err = run_cli(["data", "info", "--data", str(sample_copy), "--strict"], capsys)
    _assert_error(code, err, "human_spleen_01.png", "grayscale")
    code, out, _ = run_cli(["data", "info", "--data", str(sample_copy)], capsys)
    assert code == 0 and "images:   5" in out and "grayscale" in out


def test_unwritable_output(sample_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    argv = ["data", "folds", "--data", str(sample_copy), "--k", "3", "--out", str(blocker / "folds.json")]
    code, _, err = run_cli(argv, capsys)
    _assert_error(code, err, "--out", str(blocker))
    folder = tmp_path / "results"
    folder.mkdir()
    argv = ["data", "folds", "--data", str(sample_copy), "--k", "3", "--out", str(folder)]
    code, _, err = run_cli(argv, capsys)
    _assert_error(code, err, "--out", "is a folder")
    # A failure after the data is read (too few organs to group) leaves no file, not even a temporary one.
    code, _, err = run_cli(["data", "folds", "--data", str(sample_copy), "--group", "organ", "--out",
                            str(folder / "folds.json")], capsys)
    _assert_error(code, err, "organ")
    assert list(folder.iterdir()) == []


def test_conflicting_data_options(sample_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["data", "info", "--data", str(sample_root), "--images", str(sample_root)], capsys)
    _assert_error(code, err, "not both")
    code, _, err = run_cli(["data", "info"], capsys)
    _assert_error(code, err, "no data given")
