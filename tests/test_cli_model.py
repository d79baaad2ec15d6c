"""CLI: ``nucleisam model info`` and ``nucleisam weights download|path`` (in-process, no network)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import torch

from nucleisam.cli import main
from nucleisam.cli.options import OPTIONS
from nucleisam.config import HEADS, MODES
from nucleisam.model import checkpoint as ckpt
from nucleisam.model.mobilesam import build_mobilesam

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_seed_info_json_reports_the_notebook_counts(capsys) -> None:
    assert main(["model", "info", "--mode", "seed", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total"]["parameters"] == 10_254_156
    assert info["total"]["trainable"] == 4_182_404
    assert info["total"]["trainable_percent"] == 40.7874
    assert info["head"] == "sam" and info["input_size"] == 1024
    assert info["lora"]["rank"] == 4 and info["lora"]["alpha"] == 1.0 and len(info["lora"]["layers"]) == 41
    parts = {row["part"]: row for row in info["parts"]}
    assert parts["mask_decoder"]["trainable"] == 4_058_340
    assert parts["lora"]["parameters"] == 124_064


def test_info_table_for_late_lora(capsys) -> None:
    argv = ["model", "info", "--input-size", "512", "--lora-blocks", "6", "7", "8", "9", "--lora-rank", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mode=lora  head=instance  input 512x512" in out
    assert "blocks 6 7 8 9: 16 layers" in out and "rank 8" in out
    lora_row = next(line for line in out.splitlines() if line.startswith("lora "))
    # Per block of width d and rank r: qkv r(d+3d) + proj r(d+d) + fc1 r(d+4d) + fc2 r(4d+d) = 16·d·r.
    # Blocks 6 and 7 are 160 wide (stage 2), blocks 8 and 9 are 320 wide (stage 3).
    dims = [160, 160, 320, 320]
    expected = sum(8 * (4 * d + 2 * d + 5 * d + 5 * d) for d in dims)
    assert f"{expected:,}" in lora_row


def test_info_loads_and_verifies_a_checkpoint(tmp_path, capsys) -> None:
    torch.manual_seed(41)
    path = tmp_path / "mobile_sam.pt"
    torch.save(build_mobilesam(256).state_dict(), path)
    assert main(["model", "info", "--input-size", "256", "--checkpoint", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["weights"]["sha256"] == ckpt.file_sha256(path)
    broken = tmp_path / "broken.pt"
    state = torch.load(path, weights_only=True)
    del state["image_encoder.neck.0.weight"]
    torch.save(state, broken)
    assert main(["model", "info", "--input-size", "256", "--checkpoint", str(broken)]) == 2
    assert "image_encoder.neck.0.weight" in capsys.readouterr().err


def test_bad_options_exit_2_with_a_message(capsys) -> None:
    assert main(["model", "info", "--mode", "seed", "--head", "instance"]) == 2
    assert "seed" in capsys.readouterr().err
    assert main(["model", "info", "--input-size", "1000"]) == 2
    assert "--input-size" in capsys.readouterr().err
    # The library names the key; the CLI adds the option that sets it.
    assert main(["model", "info", "--lora-rank", "0"]) == 2
    err = capsys.readouterr().err
    assert "'model.lora.rank' must be an integer ≥ 1" in err and "--lora-rank" in err



def test_cli_choices_match_the_api() -> None:
    # The CLI keeps its own copies so that `nucleisam --help` does not import torch.
    assert OPTIONS["mode"].choices == MODES and OPTIONS["head"].choices == HEADS


def test_weights_path_and_check(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("NUCLEISAM_HOME", str(tmp_path))
    assert main(["weights", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "mobile_sam.pt")
    assert main(["weights", "path", "--check"]) == 1
    assert "nucleisam weights download" in capsys.readouterr().err
    (tmp_path / "mobile_sam.pt").write_bytes(b"not the weights")
    assert main(["weights", "path", "--check"]) == 1
    assert "--force" in capsys.readouterr().err


def test_weights_download_offline_exits_2_and_explains(monkeypatch, tmp_path, capsys) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("NUCLEISAM_HOME", str(tmp_path))
    assert main(["weights", "download", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert ckpt.CHECKPOINT_URL in err and str(tmp_path / "mobile_sam.pt") in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("group", ["model", "weights"])
def test_group_without_subcommand_prints_help(group, capsys) -> None:
    assert main([group]) == 2
    assert "SUBCOMMAND" in capsys.readouterr().out
