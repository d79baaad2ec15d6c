"""Checkpoint: cache location, download with sha256 verification, safe loading, strict key check.

No network: downloads are served from ``file://`` URLs, and "offline" is an unreachable URL. The
checkpoint is synthetic: the state_dict of a randomly initialised MobileSAM (the official 439 keys).
"""

from __future__ import annotations

import hashlib
import pickle
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from nucleisam.config import ModelConfig
from nucleisam.errors import NucleisamError
from nucleisam.model import build_model
from nucleisam.model import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def edited_checkpoint(source: Path, target: Path, edit) -> Path:
    state = torch.load(source, weights_only=True)
    edit(state)
    torch.save(state, target)
    return target


# --- strict loading and the key report -----------------------------------------------------------


def test_synthetic_checkpoint_loads_strictly(synthetic_checkpoint) -> None:
    state = torch.load(synthetic_checkpoint, weights_only=True)
    assert len(state) == 439
    model = build_model(ModelConfig(weights=str(synthetic_checkpoint), input_size=256, head="sam"))
    assert model.base_checkpoint_sha256 == hashlib.sha256(synthetic_checkpoint.read_bytes()).hexdigest()
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_key_report_names_missing_unexpected_and_mis_shaped_keys(synthetic_checkpoint, tmp_path) -> None:
    def damage(state: dict) -> None:
        del state["mask_decoder.iou_token.weight"]
        state["image_encoder.neck.0.weight"] = torch.zeros(128, 320, 1, 1)
        state["model.extra"] = torch.zeros(1)

    bad = edited_checkpoint(synthetic_checkpoint, tmp_path / "bad.pt", damage)
    with pytest.raises(NucleisamError) as info:
        build_model(ModelConfig(weights=str(bad), input_size=256))
    message = str(info.value)
    assert str(bad) in message
    assert "missing from the checkpoint (1):\n  mask_decoder.iou_token.weight" in message
    assert "unexpected in the checkpoint (1):\n  model.extra" in message
    assert "image_encoder.neck.0.weight: (128, 320, 1, 1) vs (256, 320, 1, 1)" in message


def test_report_of_a_foreign_checkpoint_is_truncated_readably() -> None:
    expected = {f"layer{i}.weight": torch.zeros(2) for i in range(30)}
    report = ckpt.compare_state_dict(expected, {"other.weight": torch.zeros(2)})
    text = report.format(limit=5)
    assert "missing from the checkpoint (30):" in text and "... and 25 more" in text
    assert "unexpected in the checkpoint (1):\n  other.weight" in text
    assert not report.ok


class _CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, writer) -> None:
    marker = tmp_path / "code-ran.txt"
    payload = {"image_encoder.neck.0.weight": torch.zeros(1), "trap": _CreatesMarker(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    # The trap is real: plain unpickling of the same object does create its marker file.
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(_CreatesMarker(control))).close()
    assert control.exists() and not marker.exists()
    with pytest.raises(NucleisamError, match="refused to load"):
        ckpt.load_state_dict_file(path)
    assert not marker.exists()


def test_each_kind_of_bad_checkpoint_gets_its_own_message(tmp_path, synthetic_checkpoint) -> None:
    """Missing, folder, empty, web page, text, truncated, garbage pickle, wrapped: each is told apart,
    and no message ever suggests loading with weights_only=False."""
    good = synthetic_checkpoint.read_bytes()
    cases = {
        "absent.pt": (None, "does not exist"),
        "empty.pt": (b"", r"is empty \(0 bytes\)"),
        "page.pt": (b"<!DOCTYPE html><html><body>Sign in</body></html>", r"is a web page \(HTML\)"),
        "notes.pt": (b"these are not weights\n", "is a text file"),
        "cut.pt": (good[: len(good) // 2], "is truncated or damaged"),
        "zip-header.pt": (b"PK\x03\x04 not really a zip", "is truncated or damaged"),
        "garbage.pt": (b"\x80\x02\xff\xfe\x00\x01junk", "damaged|truncated"),
        "random.pt": (bytes(range(256)) * 4, "not a PyTorch or safetensors file"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(NucleisamError, match=message) as caught:
            ckpt.load_state_dict_file(path)
        assert str(path) in str(caught.value)
        assert "weights_only" not in str(caught.value) and "trust" not in str(caught.value)
    with pytest.raises(NucleisamError, match="is a folder"):
        ckpt.load_state_dict_file(tmp_path)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": {"a": torch.zeros(1)}}, wrapped)
    with pytest.raises(NucleisamError, match="not a flat state_dict"):
        ckpt.load_state_dict_file(wrapped)


def test_unsafe_pickle_message_names_the_object_and_no_unsafe_advice(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"a": torch.zeros(1), "trap": _CreatesMarker(tmp_path / "m")}, path)
    with pytest.raises(NucleisamError, match=r"refused to load checkpoint .*refers to io\.open") as caught:
        ckpt.load_state_dict_file(path)
    assert "weights_only" not in str(caught.value)


def test_a_safetensors_state_dict_loads_too(tmp_path) -> None:
    from safetensors.torch import save_file

    state = {"image_encoder.neck.0.weight": torch.arange(6.0).reshape(2, 3)}
    save_file(state, tmp_path / "mobile_sam.safetensors")
    loaded = ckpt.load_state_dict_file(tmp_path / "mobile_sam.safetensors")
    assert torch.equal(loaded["image_encoder.neck.0.weight"], state["image_encoder.neck.0.weight"])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tmp_path / "mobile_sam.safetensors").read_bytes()[:-5])
    with pytest.raises(NucleisamError, match="safetensors file but cannot be read"):
        ckpt.load_state_dict_file(cut)


# --- cache location ------------------------------------------------------------------------------


def test_cache_dir_prefers_nucleisam_home_then_xdg(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("NUCLEISAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ckpt.default_checkpoint_path() == tmp_path / "home" / "mobile_sam.pt"
    monkeypatch.delenv("NUCLEISAM_HOME")
    assert ckpt.cache_dir() == tmp_path / "xdg" / "nucleisam"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert ckpt.cache_dir() == tmp_path / "user" / ".cache" / "nucleisam"


# --- download --------------------------------------------------------------------------------------


@pytest.fixture()
def served_file(tmp_path) -> tuple[str, str, bytes]:
    data = bytes(range(256)) * 9000  # 2.3 MB, more than one read chunk
    source = tmp_path / "server" / "mobile_sam.pt"
    source.parent.mkdir()
    source.write_bytes(data)
    return source.as_uri(), hashlib.sha256(data).hexdigest(), data


def test_download_verifies_and_renames_into_place(served_file, tmp_path) -> None:
    url, digest, data = served_file
    target = tmp_path / "cache" / "mobile_sam.pt"
    path = ckpt.download_checkpoint(target, url=url, sha256=digest, progress=False)
    assert path == target and target.read_bytes() == data
    assert [p.name for p in target.parent.iterdir()] == ["mobile_sam.pt"]  # no .part left behind
    # A verified file is not downloaded again (the URL now points nowhere).
    missing_url = (tmp_path / "gone.pt").as_uri()
    assert ckpt.download_checkpoint(target, url=missing_url, sha256=digest, progress=False) == target


def test_download_with_wrong_digest_keeps_nothing(served_file, tmp_path) -> None:
    url, _, _ = served_file
    target = tmp_path / "cache" / "mobile_sam.pt"
    with pytest.raises(NucleisamError, match="sha256") as info:
        ckpt.download_checkpoint(target, url=url, sha256="0" * 64, progress=False)
    assert str(target) in str(info.value)
    assert list(target.parent.iterdir()) == []


def test_offline_download_says_where_to_put_the_file(monkeypatch, tmp_path) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("NUCLEISAM_HOME", str(tmp_path / "home"))
    with pytest.raises(NucleisamError) as info:
        ckpt.download_checkpoint(progress=False)
    message = str(info.value)
    assert ckpt.CHECKPOINT_URL in message
    assert str(tmp_path / "home" / "mobile_sam.pt") in message
    assert "(model.weights)" in message and "NUCLEISAM_HOME" in message
    assert list((tmp_path / "home").iterdir()) == []


def test_corrupt_cached_file_is_reported_not_used(served_file, tmp_path) -> None:
    url, digest, _ = served_file
    target = tmp_path / "cache" / "mobile_sam.pt"
    target.parent.mkdir()
    target.write_bytes(b"half a file")
    with pytest.raises(NucleisamError, match="--force"):
        ckpt.download_checkpoint(target, url=url, sha256=digest, progress=False)
    ckpt.download_checkpoint(target, url=url, sha256=digest, progress=False, force=True)
    assert ckpt.file_sha256(target) == digest


def test_auto_weights_without_cache_or_network_fail_clearly(monkeypatch, tmp_path) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("NUCLEISAM_HOME", str(tmp_path))
    with pytest.raises(NucleisamError, match="could not download"):
        build_model(ModelConfig(weights="auto", input_size=256))
