"""Cohort runs of ``nucleisam predict``: manifest, a bad slide failing alone, resuming after kill -9,
the folder lock, CSV input lists and unwritable output folders, each input decoded once."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleisam.cli import main
from nucleisam.utils.lock import LOCK_NAME, FolderLock
from slides_helpers import sample_tiles, write_slide
from synthetic_nuclei import synthetic_nuclei

ARGS = ["--method", "classical", "--tissue", "none", "--tile", "256", "--formats", "csv,parquet,zarr"]


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "manifest.csv", newline="") as handle:
        return {Path(row["input"]).name: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small pyramidal slides (0.25 µm/px) and a truncated one."""
    folder = tmp_path_factory.mktemp("slides")
    for seed, name in enumerate(("a", "b")):
        image = synthetic_nuclei(512, 640, seed=seed)[0]
        write_slide(folder / f"{name}.tif", image, mpp=0.25, factors=(1, 2))
    data = (folder / "a.tif").read_bytes()
    (folder / "broken.tif").write_bytes(data[: len(data) // 2])
    return folder


def test_a_corrupt_slide_fails_alone_and_a_rerun_redoes_only_it(slides: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    inputs = [str(slides / "a.tif"), str(slides / "broken.tif"), str(slides / "b.tif")]
    assert main(["predict", *inputs, "--out", str(out), *ARGS]) == 2
    captured = capsys.readouterr()
    assert "1 of 3 inputs failed (broken.tif)" in captured.err and captured.err.count("\n") == 1
    assert "broken.tif: FAILED: " in captured.out
    rows = manifest(out)
    assert [rows[n]["status"] for n in ("a.tif", "broken.tif", "b.tif")] == ["done", "failed", "done"]
    assert "broken.tif" in rows["broken.tif"]["error"] and int(rows["a.tif"]["nuclei"]) > 100
    assert not list(out.glob("broken*")) and not list(out.glob(".*.part"))
    assert sorted(p.name for p in out.glob("a_*")) == ["a_labels.zarr", "a_nuclei.csv", "a_nuclei.parquet"]

    before = (out / "a_nuclei.csv").stat().st_mtime_ns
    assert main(["predict", *inputs, "--out", str(out), *ARGS]) == 2
    stdout = capsys.readouterr().out
    assert stdout.count("(manifest.csv); skipped") == 2 and "broken.tif: FAILED" in stdout
    assert (out / "a_nuclei.csv").stat().st_mtime_ns == before
    # Other parameters: a different fingerprint, so everything is redone.
    assert main(["predict", inputs[0], "--out", str(out), *ARGS, "--overlap", "48"]) == 0
    assert (out / "a_nuclei.csv").stat().st_mtime_ns != before


def ome_tiff_levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[0].levels]


def test_kill_9_mid_cohort_then_rerun_gives_the_clean_run_outputs(slides: Path, tmp_path: Path) -> None:
    """With the OME-TIFF labels and no zarr asked for, the killed slide leaves a scratch label zarr
    besides its part files: the rerun clears it with them."""
    inputs = [str(slides / name) for name in ("a.tif", "b.tif")]
    args = [*ARGS[:-1], "csv,parquet,ome-tiff"]
    out = tmp_path / "killed"
    # Post-processing in this thread: with threads the small slide b can be done within the 0.3 s
    # this waits before killing, and then nothing is left mid-way.
    command = [sys.executable, "-m", "nucleisam", "predict", *inputs, "--out", str(out), *args,
               "--postprocess-workers", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if (out / ".b_labels.ome.tif.zarr.part").exists():  # b.tif is being written
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.3)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    rows = manifest(out)
    assert rows["b.tif"]["status"] == "failed" and "unfinished" in rows["b.tif"]["error"]
    assert not (out / "b_nuclei.csv").exists()
    assert (out / ".b_labels.ome.tif.zarr.part").is_dir() and (out / "a_labels.ome.tif").is_file()

    assert main(["predict", *inputs, "--out", str(out), *args]) == 0  # the stale lock is taken over
    clean = tmp_path / "clean"
    assert main(["predict", *inputs, "--out", str(clean), *args]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())
    assert all(row["status"] == "done" for row in manifest(out).values())
    for stem in ("a", "b"):
        assert (out / f"{stem}_nuclei.csv").read_bytes() == (clean / f"{stem}_nuclei.csv").read_bytes()
        killed, fresh = (ome_tiff_levels(folder / f"{stem}_labels.ome.tif") for folder in (out, clean))
        assert len(killed) == len(fresh) == 1 and killed[0].max() > 100
        np.testing.assert_array_equal(killed[0], fresh[0])


def test_a_second_run_into_the_same_folder_is_refused(slides: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out):
        assert main(["predict", str(slides / "a.tif"), "--out", str(out), *ARGS]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "in use by another nucleisam run" in err
        assert f"pid {os.getpid()}" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    assert not (out / LOCK_NAME).exists()
    # A lock file nobody holds (a killed run's) does not block.
    (out / LOCK_NAME).write_text("pid 1 on elsewhere since long ago\n")
    assert main(["predict", str(slides / "a.tif"), "--out", str(out), *ARGS]) == 0
    assert not (out / LOCK_NAME).exists()


def test_csv_list_of_inputs_and_unwritable_output(slides: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    listing = tmp_path / "cohort.csv"
    listing.write_text(f"input,site\n{slides / 'a.tif'},x\n{slides / 'missing.svs'},y\n")
    out = tmp_path / "out"
    assert main(["predict", str(listing), "--out", str(out), *ARGS]) == 2
    assert "1 of 2 inputs failed (missing.svs)" in capsys.readouterr().err
    rows = manifest(out)
    assert rows["a.tif"]["status"] == "done" and "missing.svs" in rows["missing.svs"]["error"]

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["predict", str(slides / "a.tif"), "--out", str(blocker / "out"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create output folder" in err and str(blocker / "out") in err


def test_a_small_plain_tiff_is_decoded_once_and_segmented_like_the_same_png(
        sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A single-level, stripped TIFF below IN_MEMORY_MAX_PIXELS is opened as a slide (to learn that
    it is small), which decodes it; predicting must use those pixels, not decode the file again."""
    image = np.concatenate(sample_tiles(sample_root, 2), axis=1)  # 512×1024 px of H&E
    rows_per_strip = 64
    tifffile.imwrite(tmp_path / "plain.tif", image, compression="zlib", rowsperstrip=rows_per_strip,
                     photometric="rgb", resolution=(4e4, 4e4), resolutionunit="CENTIMETER")
    Image.fromarray(image).save(tmp_path / "plain.png")
    # tifffile decodes every deflate strip through this one function, whichever nucleisam path reads
    # the file; it caches its codecs in ``_codecs``, so that is where a counting one must go.
    deflate = tifffile.TIFF.DECOMPRESSORS[8]
    strips: list[int] = []

    def counting(data: bytes, *args: object, **kwargs: object) -> object:
        strips.append(len(data))
        return deflate(data, *args, **kwargs)

    monkeypatch.setitem(tifffile.TIFF.DECOMPRESSORS._codecs, 8, counting)
    common = ["--method", "classical", "--tile", "256", "--formats", "tiff,csv"]
    assert main(["predict", str(tmp_path / "plain.tif"), "--out", str(tmp_path / "tif"), *common]) == 0
    assert len(strips) == image.shape[0] // rows_per_strip  # every strip once: one decode
    assert main(["predict", str(tmp_path / "plain.png"), "--out", str(tmp_path / "png"), *common]) == 0
    for name in ("plain_labels.tif", "plain_nuclei.csv"):
        assert (tmp_path / "tif" / name).read_bytes() == (tmp_path / "png" / name).read_bytes(), name


def test_progress_is_logged_in_lines_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from nucleisam import batch

    monkeypatch.setattr(batch, "LOG_INTERVAL", 0.0)
    stream = io.StringIO()
    progress = batch.Progress(2, stream=stream)
    progress.start("s.svs", 10)
    progress.advance(4)
    progress.end()
    progress.close()
    line = stream.getvalue().strip()
    assert line.startswith("nucleisam: s.svs: 4/10 tiles (") and "ETA" in line and line.endswith("input 1/2")
    assert "\r" not in stream.getvalue()  # no bar drawn into a log file
