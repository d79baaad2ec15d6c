"""NuInsSeg from its Zenodo record: download, resume, checksum, safe unpacking, --from-archive, offline.

Everything runs against a local stand-in for zenodo.org on 127.0.0.1 (tests/fake_zenodo.py) serving
a records API answer and a zip of three bundled sample tiles in the release layout; no test touches
the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import zipfile
from pathlib import Path

import pytest

from fake_zenodo import sample_zip
from nucleisam.data import load_nuinsseg, summarize
from nucleisam.data.download import (
    ATTRIBUTION,
    MARKER,
    default_data_dir,
    download_dataset,
    install_from_archive,
    resolve_data_root,
    safe_extract,
)
from nucleisam.errors import NucleisamError
from nucleisam.utils.download import partial_path

STEMS = ("human_spleen_01", "human_spleen_05", "human_spleen_13")


@pytest.fixture(scope="module")
def archive_bytes(sample_root: Path) -> bytes:
    return sample_zip(sample_root, stems=STEMS)


def install_folder() -> Path:
    return default_data_dir()


def leftovers(folder: Path) -> list[str]:
    """Names in ``folder`` other than an installed data set: archives, .part files, staging folders."""
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def assert_nothing_installed(home: Path) -> None:
    datasets = home / "datasets"
    assert not (datasets / "NuInsSeg").exists()
    assert not [name for name in leftovers(datasets) if name.startswith(".NuInsSeg")]


@pytest.mark.parametrize("wrapper", ["NuInsSeg", None], ids=["top-level-folder", "organs-at-top"])
def test_download_installs_the_verified_data_set(fake_zenodo, sample_root, tmp_path, wrapper) -> None:
    data = sample_zip(sample_root, stems=STEMS, wrapper=wrapper)
    url = fake_zenodo.publish("NuInsSeg.zip", data)
    result = download_dataset("nuinsseg", progress=False)

    root = tmp_path / "home" / "datasets" / "NuInsSeg"
    assert result.root == root == install_folder() and not result.already_present
    assert fake_zenodo.requests[0] == ("/api/records/10518968", None)
    assert fake_zenodo.file_requests() == [None] and fake_zenodo.requests[1][0] == url.removeprefix(
        fake_zenodo.base
    )
    for stem in STEMS:
        for relative in (f"tissue images/{stem}.png", f"label masks modify/{stem}.tif",
                         f"vague areas/mask binary/{stem}.png"):
            source = sample_root / "human spleen" / relative
            assert (root / "human spleen" / relative).read_bytes() == source.read_bytes(), relative
    # Checked with the code of `data info`; paths reported where the files now are.
    assert result.summary == summarize(load_nuinsseg(root))
    assert result.summary.images == 3 and result.summary.root == str(root)
    assert list(result.summary.organs) == ["human spleen"]
    assert result.notes == ["NuInsSeg should have 665 images; this copy has 3"]
    attribution = (root / ATTRIBUTION).read_text()
    assert "doi:10.1038/s41597-024-03117-2" in attribution and "CC BY 4.0" in attribution
    assert "doi:10.5281/zenodo.10518968" in attribution
    marker = json.loads((root / MARKER).read_text())
    assert marker["zenodo_record"] == 10518968 and marker["images"] == 3
    assert marker["archives"][0]["checksum"] == f"md5:{hashlib.md5(data).hexdigest()}"
    # The archive is deleted once installed; no .part or staging folder is left.
    assert leftovers(root.parent) == ["NuInsSeg"]
    assert resolve_data_root("nuinsseg") == root

    again = download_dataset("nuinsseg", progress=False)
    assert again.already_present and again.root == root and again.summary == result.summary
    assert len(fake_zenodo.requests) == 2  # neither the record nor the archive was fetched again


def test_an_interrupted_download_resumes_with_a_range_request(fake_zenodo, archive_bytes, tmp_path) -> None:
    fake_zenodo.publish("NuInsSeg.zip", archive_bytes)
    fake_zenodo.cut_next = 5000
    with pytest.raises(NucleisamError) as info:
        download_dataset("nuinsseg", progress=False)
    message = str(info.value)
    part = partial_path(tmp_path / "home" / "datasets" / "NuInsSeg.zip")
    assert f"stopped after 5,000 of {len(archive_bytes):,} bytes" in message
    assert f"kept in {part}: run the same command again to resume" in message and "\n" not in message
    assert part.read_bytes() == archive_bytes[:5000]
    assert_nothing_installed(tmp_path / "home")

    result = download_dataset("nuinsseg", progress=False, keep_archive=True)
    assert fake_zenodo.file_requests() == [None, "bytes=5000-"]
    assert (part.parent / "NuInsSeg.zip").read_bytes() == archive_bytes
    assert result.summary.images == 3 and not part.exists()


def test_a_wrong_checksum_is_refused_and_nothing_is_unpacked(fake_zenodo, archive_bytes, tmp_path) -> None:
    url = fake_zenodo.publish("NuInsSeg.zip", archive_bytes, checksum="md5:" + "0" * 32)
    with pytest.raises(NucleisamError) as info:
        download_dataset("nuinsseg", progress=False)
    message = str(info.value)
    assert f"NuInsSeg.zip downloaded from {url} has md5 {hashlib.md5(archive_bytes).hexdigest()}" in message
    assert "discarded" in message and "--from-archive" in message
    assert leftovers(tmp_path / "home" / "datasets") == []


@pytest.mark.parametrize(
    "entry", ["NuInsSeg/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt", "..\\evil.txt"]
)
def test_an_archive_with_entries_outside_the_folder_is_refused(
    fake_zenodo, sample_root, tmp_path, entry
) -> None:
    fake_zenodo.publish("NuInsSeg.zip", sample_zip(sample_root, stems=STEMS, extra={entry: b"evil"}))
    with pytest.raises(NucleisamError, match="points outside the folder") as info:
        download_dataset("nuinsseg", progress=False)
    assert repr(entry) in str(info.value) and "nothing was unpacked" in str(info.value)
    assert_nothing_installed(tmp_path / "home")
    assert not list(tmp_path.rglob("evil.txt"))


def _zip_with(info: zipfile.ZipInfo, data: bytes = b"target") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("NuInsSeg/readme.txt", b"fine")
        bundle.writestr(info, data)
    return buffer.getvalue()


@pytest.mark.parametrize(("mode", "kind"), [(stat.S_IFLNK | 0o777, "a symbolic link"),
                                           (stat.S_IFIFO | 0o644, "a special file")])
def test_links_and_special_files_are_refused_before_anything_is_written(tmp_path, mode, kind) -> None:
    info = zipfile.ZipInfo("NuInsSeg/link")
    info.external_attr = mode << 16
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_with(info, b"/etc/passwd"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(NucleisamError, match=f"'NuInsSeg/link' is {kind}; nothing was unpacked"):
        safe_extract(archive, out)
    assert list(out.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_an_entry_given_twice_is_refused(tmp_path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_with(zipfile.ZipInfo("NuInsSeg/readme.txt"), b"second copy"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(NucleisamError, match=r"holds .*readme\.txt twice"):
        safe_extract(archive, out)
    assert (out / "NuInsSeg" / "readme.txt").read_bytes() == b"fine"  # never overwritten


def test_an_archive_without_organ_folders_installs_nothing(fake_zenodo, tmp_path) -> None:
    fake_zenodo.publish("NuInsSeg.zip", _zip_with(zipfile.ZipInfo("Other/notes.txt")))
    with pytest.raises(NucleisamError, match="holds no NuInsSeg organ folders"):
        download_dataset("nuinsseg", progress=False)
    assert_nothing_installed(tmp_path / "home")
    assert leftovers(tmp_path / "home" / "datasets") == ["NuInsSeg.zip"]  # verified: reused next time


def test_from_archive_is_checked_against_the_record(fake_zenodo, archive_bytes, tmp_path) -> None:
    fake_zenodo.publish("NuInsSeg.zip", archive_bytes)
    file = tmp_path / "downloads" / "NuInsSeg (1).zip"
    file.parent.mkdir()
    file.write_bytes(archive_bytes)
    out = tmp_path / "data" / "NuInsSeg"
    result = install_from_archive("nuinsseg", file, out, progress=False)
    assert result.root == out and result.summary.images == 3
    assert fake_zenodo.file_requests() == []  # only the record was read
    marker = json.loads((out / MARKER).read_text())
    assert marker["archives"][0]["verified"] == "record checksum"
    assert file.read_bytes() == archive_bytes  # the user's file is left alone
    assert leftovers(out.parent) == ["NuInsSeg"]


def test_from_archive_refuses_a_file_that_is_not_the_records(
    fake_zenodo, archive_bytes, sample_root, tmp_path
) -> None:
    fake_zenodo.publish("NuInsSeg.zip", archive_bytes)
    file = tmp_path / "NuInsSeg.zip"
    file.write_bytes(sample_zip(sample_root, stems=STEMS[:2]))
    with pytest.raises(NucleisamError, match="is not the archive of Zenodo record 10518968") as info:
        install_from_archive("nuinsseg", file, progress=False)
    assert f"md5:{hashlib.md5(archive_bytes).hexdigest()}" in str(info.value)
    assert_nothing_installed(tmp_path / "home")


def test_from_archive_offline_checks_crcs_and_content(monkeypatch, unreachable_url, archive_bytes, tmp_path):
    monkeypatch.setenv("NUCLEISAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NUCLEISAM_ZENODO_API", f"{unreachable_url}/api")
    file = tmp_path / "NuInsSeg.zip"
    file.write_bytes(archive_bytes)
    result = install_from_archive("nuinsseg", file, progress=False)
    assert result.summary.images == 3
    assert any("could not reach the Zenodo record" in note and "CRCs" in note for note in result.notes)
    marker = json.loads((result.root / MARKER).read_text())
    assert marker["archives"][0]["verified"] == "zip CRCs and content only"

    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(archive_bytes[: len(archive_bytes) // 2])
    with pytest.raises(NucleisamError, match="is not a complete zip archive"):
        install_from_archive("nuinsseg", truncated, tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()


def test_offline_is_one_line_naming_the_url_and_the_manual_route(monkeypatch, unreachable_url, tmp_path):
    monkeypatch.setenv("NUCLEISAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NUCLEISAM_ZENODO_API", f"{unreachable_url}/api")
    with pytest.raises(NucleisamError) as info:
        download_dataset("nuinsseg", progress=False)
    message = str(info.value)
    api = f"{unreachable_url}/api/records/10518968"
    assert message.startswith(f"could not reach the Zenodo records API at {api}")
    assert "https://zenodo.org/records/10518968" in message
    assert "nucleisam data download nuinsseg --from-archive FILE.zip" in message and "\n" not in message
    assert not (tmp_path / "home").exists()


def test_an_existing_foreign_folder_is_replaced_only_with_force(fake_zenodo, archive_bytes, tmp_path) -> None:
    fake_zenodo.publish("NuInsSeg.zip", archive_bytes)
    out = tmp_path / "NuInsSeg"
    out.mkdir()
    (out / "mine.txt").write_text("my notes")
    with pytest.raises(NucleisamError, match=r"was not made by `nucleisam data download`.*\(force\)"):
        download_dataset("nuinsseg", out, progress=False)
    assert (out / "mine.txt").is_file() and fake_zenodo.requests == []
    download_dataset("nuinsseg", out, force=True, progress=False)
    assert not (out / "mine.txt").exists() and (out / MARKER).is_file()
    assert leftovers(tmp_path) == ["NuInsSeg"]


def test_an_archive_already_beside_the_folder_is_used_if_verified(fake_zenodo, archive_bytes, tmp_path):
    fake_zenodo.publish("NuInsSeg.zip", archive_bytes)
    existing = tmp_path / "home" / "datasets" / "NuInsSeg.zip"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"not the archive")
    with pytest.raises(NucleisamError, match=re.escape(f"{existing} exists but its md5 is not the record's")):
        download_dataset("nuinsseg", progress=False)
    assert existing.read_bytes() == b"not the archive"
    existing.write_bytes(archive_bytes)
    result = download_dataset("nuinsseg", progress=False)
    assert result.notes[0] == f"used the verified NuInsSeg.zip already at {existing} (kept)"
    assert fake_zenodo.file_requests() == [] and existing.read_bytes() == archive_bytes


def test_the_name_resolves_to_the_download_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("NUCLEISAM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NucleisamError, match="run `nucleisam data download nuinsseg`"):
        resolve_data_root("nuinsseg")
    (tmp_path / "home" / "datasets" / "NuInsSeg").mkdir(parents=True)
    assert resolve_data_root("NuInsSeg") == tmp_path / "home" / "datasets" / "NuInsSeg"
    assert resolve_data_root("/data/elsewhere") == Path("/data/elsewhere")
    (tmp_path / "nuinsseg").mkdir()  # a folder of that name here is what the user means
    assert resolve_data_root("nuinsseg") == Path("nuinsseg")
