"""`nucleisam data download|path`, and `--data nuinsseg` in every command reading data (local server only)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fake_zenodo import sample_zip
from nucleisam.cli import build_parser, main
from nucleisam.cli.options import config_values


@pytest.fixture()
def installed(fake_zenodo, sample_root: Path, tmp_path: Path, capsys) -> Path:
    """NuInsSeg (three sample tiles) installed by the CLI from the local fake Zenodo."""
    fake_zenodo.publish("NuInsSeg.zip", sample_zip(sample_root))
    assert main(["data", "download", "nuinsseg", "--quiet"]) == 0
    return tmp_path / "home" / "datasets" / "NuInsSeg"


def test_download_prints_the_check_the_citation_and_how_to_use_it(fake_zenodo, sample_root, tmp_path, capsys):
    fake_zenodo.publish("NuInsSeg.zip", sample_zip(sample_root))
    assert main(["data", "download", "nuinsseg", "--quiet"]) == 0
    out, err = capsys.readouterr()
    root = tmp_path / "home" / "datasets" / "NuInsSeg"
    assert f"data:     {root} (nuinsseg layout)" in out
    assert "images:   3" in out and "organs:   1" in out
    assert f"NuInsSeg is ready in {root}" in out
    assert "use it with --data nuinsseg, e.g. nucleisam cv --data nuinsseg --out runs/cv5" in out
    assert "Please cite: A. Mahbod et al." in out and "doi:10.1038/s41597-024-03117-2" in out
    assert "Licence: Creative Commons Attribution 4.0 International (CC BY 4.0)" in out
    assert err == "nucleisam: note: NuInsSeg should have 665 images; this copy has 3\n"

    assert main(["data", "download", "nuinsseg", "--quiet"]) == 0
    assert "(already installed; --force installs it again)" in capsys.readouterr().out


def test_path_prints_the_download_folder(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("NUCLEISAM_HOME", str(tmp_path / "home"))
    assert main(["data", "path", "nuinsseg"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'home' / 'datasets' / 'NuInsSeg'}\n"


def test_data_nuinsseg_names_the_installed_folder(installed: Path, capsys, monkeypatch, tmp_path) -> None:
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["data", "info", "--data", "nuinsseg"]) == 0
    assert f"data:     {installed} (nuinsseg layout)" in capsys.readouterr().out
    parser = build_parser()
    for argv in (
        ["cv", "--data", "nuinsseg", "--out", "run"],
        ["train", "--data", "nuinsseg", "--out", "run", "--fold", "0"],
        ["baseline", "--data", "nuinsseg", "--out", "run"],
    ):
        assert config_values(parser.parse_args(argv))["data.root"] == str(installed.resolve()), argv
    predictions = tmp_path / "pred"
    shutil.copytree(installed / "human spleen" / "label masks modify", predictions)
    assert main(["evaluate", "--pred", str(predictions), "--data", "nuinsseg"]) == 0
    assert "images: 3" in capsys.readouterr().out
    folds = tmp_path / "folds.json"
    assert main(["data", "folds", "--data", "nuinsseg", "--k", "3", "--out", str(folds)]) == 0
    assert folds.is_file()


def test_offline_is_one_error_line_and_exit_2(monkeypatch, unreachable_url, tmp_path, capsys) -> None:
    monkeypatch.setenv("NUCLEISAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NUCLEISAM_ZENODO_API", f"{unreachable_url}/api")
    assert main(["data", "download", "nuinsseg", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"nucleisam: error: could not reach the Zenodo records API at {unreachable_url}/api/"
    )
    assert err.count("\n") == 1 and "--from-archive FILE.zip" in err


def test_from_archive_through_the_cli(fake_zenodo, sample_root, tmp_path, capsys) -> None:
    data = sample_zip(sample_root)
    fake_zenodo.publish("NuInsSeg.zip", data)
    file = tmp_path / "NuInsSeg.zip"
    file.write_bytes(data)
    out = tmp_path / "data" / "NuInsSeg"
    assert (
        main(["data", "download", "nuinsseg", "--from-archive", str(file), "--out", str(out), "--quiet"]) == 0
    )
    text = capsys.readouterr().out
    assert f"NuInsSeg is ready in {out}" in text and f"use it with --data {out}," in text


def test_data_nuinsseg_before_download_says_how_to_get_it(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("NUCLEISAM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["baseline", "--data", "nuinsseg", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "NuInsSeg has not been downloaded" in err and "run `nucleisam data download nuinsseg`" in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()
