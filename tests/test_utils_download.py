"""Resumable, verified downloads (nucleisam.utils.download) against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from nucleisam.errors import NucleisamError
from nucleisam.utils.download import DownloadError, download_file, fetch_json, file_digest, partial_path

DATA = os.urandom(3 * (1 << 20) + 12345)  # several read chunks, not a multiple of the chunk size
SHA256 = hashlib.sha256(DATA).hexdigest()


def test_interrupted_download_keeps_its_part_and_resumes_with_a_range_request(fake_zenodo, tmp_path) -> None:
    url = fake_zenodo.publish("data.bin", DATA)
    target = tmp_path / "data.bin"
    fake_zenodo.cut_next = 1_500_000
    with pytest.raises(DownloadError) as info:
        download_file(url, target, digest=SHA256, progress=False)
    message = str(info.value)
    assert "stopped after 1,500,000 of" in message and url in message
    assert "run the same command again to resume" in message and str(partial_path(target)) in message
    assert "\n" not in message
    assert not target.exists() and partial_path(target).read_bytes() == DATA[:1_500_000]

    assert download_file(url, target, digest=SHA256, progress=False) == target
    assert fake_zenodo.file_requests() == [None, "bytes=1500000-"]
    assert target.read_bytes() == DATA
    assert not partial_path(target).exists()


def test_a_server_ignoring_the_range_sends_the_whole_file_which_replaces_the_part(
    fake_zenodo, tmp_path
) -> None:
    url = fake_zenodo.publish("data.bin", DATA)
    target = tmp_path / "data.bin"
    partial_path(target).write_bytes(b"stale bytes from another file")
    fake_zenodo.ignore_range = True
    download_file(url, target, digest=SHA256, progress=False)
    assert fake_zenodo.file_requests() == ["bytes=29-"]
    assert target.read_bytes() == DATA


def test_a_part_the_server_cannot_continue_is_downloaded_again(fake_zenodo, tmp_path) -> None:
    url = fake_zenodo.publish("data.bin", DATA)
    target = tmp_path / "data.bin"
    partial_path(target).write_bytes(b"\0" * len(DATA))  # as long as the file, wrong content: HTTP 416
    download_file(url, target, digest=SHA256, progress=False)
    assert fake_zenodo.file_requests() == [f"bytes={len(DATA)}-", None]
    assert target.read_bytes() == DATA


def test_a_complete_part_of_the_known_size_is_verified_without_asking_the_server(
    fake_zenodo, tmp_path
) -> None:
    url = fake_zenodo.publish("data.bin", DATA)
    target = tmp_path / "data.bin"
    partial_path(target).write_bytes(DATA)
    download_file(url, target, digest=SHA256, size=len(DATA), progress=False)
    assert fake_zenodo.requests == [] and target.read_bytes() == DATA


def test_a_checksum_mismatch_discards_the_download(fake_zenodo, tmp_path) -> None:
    url = fake_zenodo.publish("data.bin", DATA)
    target = tmp_path / "data.bin"
    with pytest.raises(DownloadError) as info:
        download_file(url, target, digest="0" * 32, algorithm="md5", progress=False, hint="Get it by hand.")
    message = str(info.value)
    assert f"has md5 {hashlib.md5(DATA).hexdigest()}, expected {'0' * 32}" in message
    assert url in message and message.endswith("discarded. Get it by hand.")
    assert list(tmp_path.iterdir()) == []


def test_offline_names_the_url_and_leaves_nothing(unreachable_url, tmp_path) -> None:
    url = f"{unreachable_url}/data.bin"
    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "data.bin", digest=SHA256, progress=False, what="the data")
    assert str(info.value).startswith(f"could not download the data from {url} (")
    assert "refused" in info.value.reason.lower()
    assert list(tmp_path.iterdir()) == []


def test_fetch_json_reads_the_api_and_reports_what_is_not_json(fake_zenodo, unreachable_url) -> None:
    fake_zenodo.publish("data.bin", b"x")
    record = fetch_json(f"{fake_zenodo.api}/records/10518968")
    assert record["files"][0]["key"] == "data.bin"
    with pytest.raises(DownloadError, match="did not answer with JSON"):
        fetch_json(fake_zenodo.file_url("data.bin"))
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_json(f"{fake_zenodo.api}/records/1")
    with pytest.raises(DownloadError, match=f"could not reach {unreachable_url}/api"):
        fetch_json(f"{unreachable_url}/api")


def test_file_digest_supports_any_hashlib_algorithm(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    assert file_digest(path, "md5") == hashlib.md5(DATA).hexdigest()
    assert file_digest(path) == SHA256
    with pytest.raises(NucleisamError, match="unsupported checksum algorithm 'crc99'"):
        file_digest(path, "crc99")
