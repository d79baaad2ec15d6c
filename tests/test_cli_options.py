"""CLI options defined once: same spelling and meaning in every command, deprecated spellings that
still work with one warning, options and ``--set`` giving the same configuration, and library errors
shown with the command's flags."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from nucleisam.cli import build_parser, main
from nucleisam.cli.options import (
    CONFIG,
    DATA_SOURCE,
    FOLDS,
    MODEL,
    OPTIONS,
    REMOVED_IN,
    config_values,
    name_flags,
)
from nucleisam.config import Config, load_baseline_config, load_run_config

ORGAN = "human spleen"
RUN = (*CONFIG, "device", "resume", "out")
#: The options each command takes, by registry name.
COMMANDS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("data", "info"): (*DATA_SOURCE, "json"),
    ("data", "folds"): (*DATA_SOURCE, *FOLDS, "out"),
    ("data", "download"): ("force", "from_archive", "keep_archive", "quiet", "out"),
    ("model", "info"): (*MODEL, *CONFIG, "json"),
    ("weights", "download"): ("force", "quiet"),
    ("weights", "path"): ("check",),
    ("evaluate",): ("pred", "data", "masks", "vague_masks", "binary_masks", "vague_threshold", "zone_width",
                    "out", "json"),
    ("cv",): (*DATA_SOURCE, "mpp", *FOLDS, *MODEL, *RUN),
    ("train",): (*DATA_SOURCE, "mpp", *FOLDS, "fold", "all", *MODEL, *RUN),
    ("demo",): (*MODEL, "overrides", "device", "resume", "out"),
    ("baseline",): (*DATA_SOURCE, "mpp", *FOLDS, "folds", *CONFIG, "resume", "out"),
    ("predict",): ("mpp", "adapter", "method", "checkpoint", "allow_checkpoint_mismatch", "model", "backend",
                   "tile", "overlap", "batch_size", "device", "tissue", "workers", "scheduler", "chunk_tiles",
                   "out", "formats", "overwrite"),
    ("export",): ("adapter", "file_format", "out", "input_size", "checkpoint", "allow_checkpoint_mismatch",
                  "overwrite"),
}
#: Options whose help a command words for itself (what its output folder holds, what its data is).
OWN_HELP = {"out", "config", "formats", "json"}
#: Minimal arguments that make each command's parser accept the rest.
REQUIRED = {
    ("data", "folds"): ["--out", "f.json"],
    ("data", "download"): ["nuinsseg"],
    ("evaluate",): ["--pred", "p"],
    ("cv",): ["--out", "o"],
    ("train",): ["--out", "o", "--all"],
    ("baseline",): ["--out", "o"],
    ("predict",): ["x.png", "--out", "o"],
    ("export",): ["--adapter", "a", "--format", "onnx", "--out", "m.onnx"],
}


def help_text(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def flat(text: str) -> str:
    """Text without whitespace: argparse wraps help lines anywhere, hyphens included."""
    return "".join(text.split())


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("nucleisam: warning:")]


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text((), capsys)
    for name in ("data", "model", "weights", "cv", "train", "demo", "baseline", "evaluate", "predict",
                 "export"):
        assert re.search(rf"^\s+{name}\s", text, re.MULTILINE), name


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_every_command_takes_its_options_with_the_one_spelling_and_help(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(command, capsys)
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text.split("\n\n", 1)[1])) - {"--help"}
    expected = {OPTIONS[name].flag for name in COMMANDS[command]}
    # Other flags may be named inside help texts (e.g. "with --mode seed"), never offered unregistered.
    assert expected <= flags and flags <= {option.flag for option in OPTIONS.values()}
    options_part = flat(text.split("options:", 1)[1])
    for name in COMMANDS[command]:
        option = OPTIONS[name]
        assert re.search(rf"^\s+{option.flag}\b", text, re.MULTILINE), option.flag
        # export's --input-size is the exported file's tile size, not the model's input size.
        own = (command, name) in ((("evaluate",), "data"), (("export",), "input_size"))
        if name not in OWN_HELP and not own:
            assert flat(option.help_text()) in options_part, option.flag
    for old in (old for option in OPTIONS.values() for old in option.deprecated):
        assert old not in text  # deprecated spellings work but are not offered


GROUPS = {
    ("cv",): ("data", "folds", "model", "run", "output"),
    ("train",): ("data", "folds", "model", "run", "output"),
    ("baseline",): ("data", "folds", "run", "output"),
    ("data", "folds"): ("data", "folds", "output"),
    ("model", "info"): ("model", "run", "output"),
    ("evaluate",): ("data", "run", "output"),
    ("predict",): ("data", "model", "run", "whole slides", "output"),
    ("demo",): ("model", "run", "output"),
}


@pytest.mark.parametrize("command", list(GROUPS), ids=" ".join)
def test_help_groups_the_options(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    groups = GROUPS[command]
    text = help_text(command, capsys)
    titles = re.findall(r"^(\w[\w ]*):$", text, re.MULTILINE)
    assert [title for title in titles if title in groups] == list(groups)


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["--device", "cuda:1"], "device", "cuda:1"),
        (["--k", "3"], "k", 3),
        (["--val-fraction", "0.2"], "val_fraction", 0.2),
        (["--val-seed", "4"], "val_seed", 4),
        (["--group", "organ"], "group", "organ"),
        (["--lora-rank", "8"], "lora_rank", 8),
        (["--lora-blocks", "6", "7"], "lora_blocks", [6, 7]),
        (["--lora-targets", "qkv", "proj"], "lora_targets", ["qkv", "proj"]),
        (["--binary-masks", "--masks", "gt"], "binary_masks", True),
        (["--masks", "gt"], "masks", "gt"),
        (["--mpp", "0.5"], "mpp", 0.5),
    ],
)
def test_an_option_means_the_same_in_every_command_that_takes_it(argv: list[str], dest: str,
                                                                  value: object) -> None:
    parser = build_parser()
    commands = [command for command, names in COMMANDS.items() if dest in names]
    assert len(commands) >= 2
    for command in commands:
        args = parser.parse_args([*command, *REQUIRED.get(command, []), *argv])
        assert getattr(args, dest) == value, command


@pytest.mark.parametrize("command", [c for c, names in COMMANDS.items() if "device" in names], ids=" ".join)
def test_device_is_checked_the_same_everywhere(command: tuple[str, ...],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    base = [*command, *REQUIRED.get(command, [])]
    assert parser.parse_args(base).device in (None, "auto")  # None: the configuration's default, auto
    with pytest.raises(SystemExit) as done:
        parser.parse_args([*base, "--device", "gpu"])
    assert done.value.code == 2
    assert "'gpu' is not a device: use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_documented_defaults_are_the_configuration_defaults() -> None:
    config = Config()
    checked = 0
    for option in OPTIONS.values():
        if option.key is None or option.default is None:
            continue
        value = config
        for part in option.key.split("."):
            value = getattr(value, part)
        assert value == option.default, option.flag
        checked += 1
    assert checked >= 10


def _run_config(argv: list[str]) -> Config:
    args = build_parser().parse_args(argv)
    return load_run_config(args.config, args.overrides, config_values(args))


@pytest.mark.parametrize("command", [["cv", "--out", "o"], ["train", "--out", "o", "--fold", "1"]],
                         ids=["cv", "train"])
@pytest.mark.parametrize(
    ("options", "settings"),
    [
        (["--lora-rank", "8"], ["model.lora.rank=8"]),
        (["--lora-alpha", "2", "--lora-dropout", "0.1"], ["model.lora.alpha=2", "model.lora.dropout=0.1"]),
        (["--lora-blocks", "6", "7", "--lora-targets", "qkv", "fc2"],
         ["model.lora.blocks=[6, 7]", "model.lora.targets=[qkv, fc2]"]),
        (["--mode", "decoder", "--head", "sam", "--input-size", "512"],
         ["model.mode=decoder", "model.head=sam", "model.input_size=512"]),
        (["--k", "3", "--seed", "7", "--group", "organ", "--val-fraction", "0.25", "--val-seed", "2"],
         ["data.k=3", "data.seed=7", "data.group=organ", "data.val_fraction=0.25", "data.val_seed=2"]),
        (["--device", "cpu", "--binary-masks", "--strict"],
         ["train.device=cpu", "data.binary_masks=true", "data.strict=true"]),
        (["--mpp", "0.5"], ["data.mpp=0.5"]),
    ],
)
def test_an_option_and_its_set_key_give_the_same_configuration(command: list[str], options: list[str],
                                                               settings: list[str]) -> None:
    by_set = [item for setting in settings for item in ("--set", setting)]
    from_options = _run_config([*command, *options])
    assert from_options == _run_config([*command, *by_set])
    assert from_options != _run_config(command)


def test_paths_from_options_are_absolute_like_config_yaml(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = _run_config(["cv", "--out", "o", "--images", "imgs", "--masks", "gt", "--checkpoint", "w.pt"])
    assert (config.data.images, config.data.masks, config.model.weights) == (
        str(tmp_path / "imgs"), str(tmp_path / "gt"), str(tmp_path / "w.pt"))


def test_set_is_applied_after_the_options_and_the_file(tmp_path: Path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("model:\n  lora:\n    rank: 2\ndata:\n  k: 4\n")
    config = _run_config(["cv", "--out", "o", "--config", str(file), "--lora-rank", "6",
                          "--set", "model.lora.rank=8"])
    # file < option < --set; options left out keep the file's values
    assert (config.model.lora.rank, config.data.k) == (8, 4)
    assert _run_config(["cv", "--out", "o", "--config", str(file), "--lora-rank", "6"]).model.lora.rank == 6


def test_demo_takes_model_options_over_its_configuration() -> None:
    args = build_parser().parse_args(["demo", "--lora-rank", "2", "--device", "cpu",
                                      "--set", "train.epochs=1"])
    assert config_values(args) == {"model.lora.rank": 2, "train.device": "cpu"}
    assert args.overrides == ["train.epochs=1"]


def test_baseline_option_and_set_key_give_the_same_configuration() -> None:
    def baseline_config(argv: list[str]) -> object:
        args = build_parser().parse_args(["baseline", "--out", "o", *argv])
        return load_baseline_config(args.config, args.overrides, config_values(args))

    assert baseline_config(["--k", "3", "--val-seed", "5"]) == baseline_config(
        ["--set", "data.k=3", "--set", "data.val_seed=5"])


@pytest.mark.usefixtures("torch_one_thread")
def test_model_info_option_and_set_key_build_the_same_network(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["model", "info", "--json", "--input-size", "256"]
    assert main([*base, "--lora-rank", "8", "--lora-blocks", "9"]) == 0
    by_option = json.loads(capsys.readouterr().out)
    assert main([*base, "--set", "model.lora.rank=8", "--set", "model.lora.blocks=[9]"]) == 0
    assert json.loads(capsys.readouterr().out) == by_option
    assert by_option["lora"]["rank"] == 8 and len(by_option["lora"]["layers"]) == 4


# Deprecated spellings: each still works, with exactly one warning line, until REMOVED_IN.


def _vague_case(sample_root: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """Ground truth as a plain label-map folder, predictions (the ground truth itself) and vague masks."""
    truth = tmp_path / "truth"
    shutil.copytree(sample_root / ORGAN / "label masks modify", truth)
    predictions = tmp_path / "pred"
    shutil.copytree(truth, predictions)
    return truth, predictions, sample_root / ORGAN / "vague areas" / "mask binary"


@pytest.mark.parametrize(
    ("old", "new"),
    [("--gt", "--masks"), ("--ambiguous", "--vague-masks"), ("--ambiguous-threshold", "--vague-threshold")],
)
def test_deprecated_evaluate_spellings_still_work_with_one_warning(
    old: str, new: str, sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth, predictions, vague = _vague_case(sample_root, tmp_path)
    values = {"--masks": str(truth), "--vague-masks": str(vague), "--vague-threshold": "0.1"}
    current = ["evaluate", "--pred", str(predictions), "--json", *[x for kv in values.items() for x in kv]]
    assert main(current) == 0
    expected = capsys.readouterr()
    assert warnings_in(expected.err) == []
    assert main([old if arg == new else arg for arg in current]) == 0
    got = capsys.readouterr()
    warning = f"nucleisam: warning: {old} is deprecated, use {new} (removed in {REMOVED_IN})"
    assert warnings_in(got.err) == [warning]
    assert json.loads(got.out) == json.loads(expected.out)
    assert json.loads(got.out)["settings"]["ambiguous_threshold"] == 0.1


def test_deprecated_gt_is_still_exclusive_with_data(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--pred", str(tmp_path), "--gt", str(tmp_path), "--data", str(tmp_path)])
    assert done.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_positional_data_root_still_works_with_one_warning(sample_root: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "--data", str(sample_root), "--json"]) == 0
    expected = capsys.readouterr()
    assert main(["data", "info", str(sample_root), "--json"]) == 0
    got = capsys.readouterr()
    assert got.out == expected.out
    assert warnings_in(got.err) == [
        f"nucleisam: warning: ROOT is deprecated, use --data ROOT (removed in {REMOVED_IN})"]
    folds = ["data", "folds", "--k", "3", "--out"]
    assert main([*folds, str(tmp_path / "old.json"), str(sample_root)]) == 0
    assert len(warnings_in(capsys.readouterr().err)) == 1
    assert main([*folds, str(tmp_path / "new.json"), "--data", str(sample_root)]) == 0
    assert (tmp_path / "old.json").read_text() == (tmp_path / "new.json").read_text()
    assert main(["data", "info", str(sample_root), "--data", str(sample_root)]) == 2
    assert "give the data root once, as --data ROOT" in capsys.readouterr().err


# Library errors name parameters and configuration keys; the CLI shows its flags.


def test_name_flags_maps_keys_and_parameters_to_the_commands_flags() -> None:
    cv = vars(build_parser().parse_args(["cv", "--out", "o"]))
    assert name_flags("configuration key 'data.k' must be at least 2 (got 1).", cv) == (
        "configuration key 'data.k' must be at least 2 (got 1) (option --k).")
    assert name_flags("fold 5 does not exist (only_folds): folds are 0–4 (data.k).",
                      vars(build_parser().parse_args(["train", "--out", "o", "--fold", "5"]))) == (
        "fold 5 does not exist (--fold): folds are 0–4 (--k).")
    assert name_flags("no data: set data.root, or data.images with data.masks.", cv) == (
        "no data: set data.root, or data.images with data.masks (options --data, --images, --masks).")
    # The error's own key (a ConfigError's), even when its text does not spell it.
    assert name_flags("LoRA rank must be ≥ 1.", cv, key="model.lora.rank") == (
        "LoRA rank must be ≥ 1 (option --lora-rank).")
    predict = vars(build_parser().parse_args(["predict", "x.png", "--out", "o"]))
    assert name_flags("overlap=80 must be smaller than tile=64", predict) == (
        "overlap=80 must be smaller than tile=64 (options --overlap, --tile)")
    # Nothing for what the command has no flag for, and no flag twice.
    demo = vars(build_parser().parse_args(["demo"]))
    assert name_flags("configuration key 'data.k' must be at least 2 (got 1).", demo) == (
        "configuration key 'data.k' must be at least 2 (got 1).")
    assert name_flags("--k must be at least 2 (data.k).", cv) == "--k must be at least 2 (data.k)."
    assert name_flags("tiles=3 and subtile=2 (data.kind)", predict) == "tiles=3 and subtile=2 (data.kind)"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["cv", "--out", "OUT", "--k", "1"], "'data.k' must be at least 2 (got 1) (option --k)."),
        (["train", "--out", "OUT", "--all", "--val-fraction", "1"],
         "'data.val_fraction' must be in (0, 1) (got 1.0) (option --val-fraction)."),
        (["train", "--out", "OUT", "--all", "--mpp", "-1"],
         "'data.mpp' must be a resolution in microns per pixel between 0.01 and 50.0 (0.25 for a 40x scan, "
         "0.5 for 20x) (got -1.0) (option --mpp)."),
        (["cv", "--out", "OUT", "--mpp", "inf"], "'data.mpp': got inf (float), expected a finite number "
         "(option --mpp)."),
        (["cv", "--out", "OUT", "--config", "MPP_FILE"], "'data.mpp': got 'abc' (str), expected a finite "
         "number (option --mpp)."),
        (["cv", "--out", "OUT"], "no data: set data.root (a NuInsSeg-layout folder), or data.images with "
         "data.masks (folders of images and label maps) (options --data, --images, --masks)."),
        (["predict", "IN", "--method", "classical", "--out", "OUT", "--tile", "8"],
         "tile=8 is too small; use at least 16 pixels (512 is typical) (option --tile)."),
        (["data", "folds", "--data", "MISSING", "--out", "OUT"], "(--data). Check the path."),
        (["evaluate", "--pred", "MISSING", "--masks", "MISSING"], "nope (--pred) is not a folder"),
    ],
)
def test_cli_errors_name_the_flag_in_one_line_and_write_nothing(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run.yaml").write_text("data:\n  mpp: abc\n")
    replace = {"OUT": str(tmp_path / "out"), "IN": str(tmp_path / "in.png"),
               "MISSING": str(tmp_path / "nope"), "MPP_FILE": str(tmp_path / "run.yaml")}
    assert main([replace.get(arg, arg) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nucleisam: error: ") and err.count("\n") == 1
    assert expected in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [c for c, names in COMMANDS.items() if "mpp" in names], ids=" ".join)
def test_a_resolution_that_is_not_a_number_is_refused_by_every_command(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*command, *REQUIRED.get(command, []), "--mpp", "abc"])
    assert done.value.code == 2
    assert "argument --mpp: invalid float value: 'abc'" in capsys.readouterr().err


def test_registry_is_consistent() -> None:
    flags = [option.flag for option in OPTIONS.values()]
    old = [spelling for option in OPTIONS.values() for spelling in option.deprecated]
    assert len(set(flags + old)) == len(flags) + len(old)
    for name, option in OPTIONS.items():
        assert name == option.dest and option.flag.startswith("--")
        assert option.help and not option.help.endswith("."), option.flag
        assert not (option.switch and option.default is not None), option.flag
    assert OPTIONS["k"].names == ("data.k", "k") and OPTIONS["quiet"].names == ()
