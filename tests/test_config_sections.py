"""Every configuration section checks its ranges, and its errors name the dotted key (never a CLI flag)."""

from __future__ import annotations

from typing import Any

import pytest

from nucleisam.config import (
    SEED_LORA,
    ClassicalConfig,
    Config,
    ConfigError,
    DataConfig,
    LoraConfig,
    LossConfig,
    ModelConfig,
    PostprocessConfig,
    TrainConfig,
    assign,
    from_dict,
    load_run_config,
    to_dict,
)
from nucleisam.errors import NucleisamError

#: Where each section of a training run sits in its :class:`Config` tree.
SECTION_KEYS = {
    DataConfig: "data",
    ModelConfig: "model",
    LoraConfig: "model.lora",
    PostprocessConfig: "postprocess",
    TrainConfig: "train",
    LossConfig: "train.loss",
}

BAD_VALUES: list[tuple[type, dict[str, Any], str]] = [
    (DataConfig, {"k": 1}, "data.k"),
    (DataConfig, {"val_fraction": 1.0}, "data.val_fraction"),
    (DataConfig, {"masks": "/labels"}, "data.masks"),
    (DataConfig, {"root": "/a", "images": "/b"}, "data.root/data.images"),
    (DataConfig, {"seed": -1}, "data.seed"),
    (DataConfig, {"val_seed": 2**32}, "data.val_seed"),
    (DataConfig, {"mpp": 0.0}, "data.mpp"),
    (DataConfig, {"mpp": -1.0}, "data.mpp"),
    (DataConfig, {"mpp": 100.0}, "data.mpp"),  # not a microscope's (an image editor's ~0.35 mm)
    (LoraConfig, {"rank": 0}, "model.lora.rank"),
    (LoraConfig, {"alpha": 0.0}, "model.lora.alpha"),
    (LoraConfig, {"dropout": 1.0}, "model.lora.dropout"),
    (LoraConfig, {"targets": ("qkv", "query")}, "model.lora.targets"),
    (LoraConfig, {"targets": ()}, "model.lora.targets"),
    (LoraConfig, {"blocks": (3, 10)}, "model.lora.blocks"),
    (LoraConfig, {"blocks": ()}, "model.lora.blocks"),
    (ModelConfig, {"mode": "fast"}, "model.mode"),
    (ModelConfig, {"head": "hovernet"}, "model.head"),
    (ModelConfig, {"input_size": 1000}, "model.input_size"),
    (ModelConfig, {"input_size": 64}, "model.input_size"),
    (ModelConfig, {"head_widths": (8, 8, 8, 8)}, "model.head_widths"),
    (ModelConfig, {"head_widths": (8, 8, 6, 8, 8)}, "model.head_widths"),
    (ModelConfig, {"mode": "seed", "head": "instance"}, "model.head"),
    (ModelConfig, {"mode": "seed", "lora": LoraConfig(rank=8)}, "model.lora"),
    (PostprocessConfig, {"foreground_threshold": 1.5}, "postprocess.foreground_threshold"),
    (PostprocessConfig, {"center_threshold": -0.1}, "postprocess.center_threshold"),
    (PostprocessConfig, {"boundary_threshold": 2.0}, "postprocess.boundary_threshold"),
    (PostprocessConfig, {"split_depth": -1.0}, "postprocess.split_depth"),
    (PostprocessConfig, {"peak_height": -1.0}, "postprocess.peak_height"),
    (PostprocessConfig, {"min_area": -1}, "postprocess.min_area"),
    (ClassicalConfig, {"sigma": -1.0}, "classical.sigma"),
    (ClassicalConfig, {"threshold": -0.1}, "classical.threshold"),
    (ClassicalConfig, {"otsu_scale": 0.0}, "classical.otsu_scale"),
    (ClassicalConfig, {"min_optical_density": -0.01}, "classical.min_optical_density"),
    (ClassicalConfig, {"peak_height": -2.0}, "classical.peak_height"),
    (ClassicalConfig, {"min_area": -5}, "classical.min_area"),
    (LossConfig, {"bce_weight": -1.0}, "train.loss.bce_weight"),
    (LossConfig, {"dice_weight": -1.0}, "train.loss.dice_weight"),
    (LossConfig, {"distance_weight": -0.5}, "train.loss.distance_weight"),
    (LossConfig, {"smooth_l1_beta": 0.0}, "train.loss.smooth_l1_beta"),
    (TrainConfig, {"epochs": 0}, "train.epochs"),
    (TrainConfig, {"batch_size": 0}, "train.batch_size"),
    (TrainConfig, {"eval_batch_size": 0}, "train.eval_batch_size"),
    (TrainConfig, {"lr": 0.0}, "train.lr"),
    (TrainConfig, {"weight_decay": -0.1}, "train.weight_decay"),
    (TrainConfig, {"betas": (0.9, 1.0)}, "train.betas"),
    (TrainConfig, {"warmup_fraction": 1.0}, "train.warmup_fraction"),
    (TrainConfig, {"epochs": 10, "warmup_epochs": 11.0}, "train.warmup_epochs"),
    (TrainConfig, {"min_lr_ratio": 1.5}, "train.min_lr_ratio"),
    (TrainConfig, {"grad_clip": 0.0}, "train.grad_clip"),
    (TrainConfig, {"grad_accumulation": 0}, "train.grad_accumulation"),
    (TrainConfig, {"num_workers": -1}, "train.num_workers"),
    (TrainConfig, {"validate_every": 0}, "train.validate_every"),
    (TrainConfig, {"seed": -3}, "train.seed"),
]


def _ids(case: tuple[type, dict[str, Any], str]) -> str:
    return f"{case[2]}={list(case[1].values())[-1]!r}"


@pytest.mark.parametrize("case", BAD_VALUES, ids=[_ids(c) for c in BAD_VALUES])
def test_range_errors_name_the_dotted_key(case: tuple[type, dict[str, Any], str]) -> None:
    cls, kwargs, key = case
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert info.value.key == key
    assert str(info.value).startswith(f"configuration key '{key}'")
    assert "--" not in str(info.value)  # library errors name keys; the CLI adds its own options


@pytest.mark.parametrize("case", BAD_VALUES, ids=[_ids(c) for c in BAD_VALUES])
def test_the_same_errors_from_a_config_mapping(case: tuple[type, dict[str, Any], str]) -> None:
    """A config file (or --set) with the bad value fails on the same dotted key."""
    cls, kwargs, key = case
    plain = {name: to_dict(value) for name, value in kwargs.items()}
    with pytest.raises(ConfigError) as info:
        if cls is ClassicalConfig:  # the baseline run's section, not part of a training run's tree
            from_dict(ClassicalConfig, plain, prefix="classical")
        else:
            from_dict(Config, assign({}, {f"{SECTION_KEYS[cls]}.{k}": v for k, v in plain.items()}))
    assert info.value.key == key


def test_defaults_are_valid_and_match_the_documented_values() -> None:
    config = Config()
    assert (config.data.k, config.data.seed, config.data.val_fraction) == (5, 19, 0.125)
    assert config.model.head == "instance" and config.model.lora == LoraConfig()
    assert config.model.lora.targets == ("qkv", "proj", "fc1", "fc2") and config.model.lora.scale == 1.0
    assert ModelConfig(mode="seed").lora == SEED_LORA and ModelConfig(mode="seed").head == "sam"
    assert SEED_LORA.targets[-1] == "head" and SEED_LORA.scale == 0.25
    assert config.postprocess == PostprocessConfig() and ClassicalConfig().min_area == 30
    assert config.data.mpp is None  # a run settles it: what the images record, else NuInsSeg's 0.25
    assert DataConfig(mpp=0.5).mpp == 0.5 and load_run_config(None, ["data.mpp=0.2525"]).data.mpp == 0.2525


def test_whole_numbers_and_lists_are_accepted_as_written_in_yaml() -> None:
    config = load_run_config(
        None, ["model.lora.blocks=[6, 7, 8, 9]", "model.head_widths=[64, 48, 32, 16, 8]", "train.lr=1e-4"]
    )
    assert config.model.lora.blocks == (6, 7, 8, 9) and config.model.head_widths == (64, 48, 32, 16, 8)
    assert config.train.lr == pytest.approx(1e-4)
    # A seed run's saved config.yaml spells out the notebook's LoRA; it must load back.
    seed = load_run_config(None, ["model.mode=seed"])
    assert load_run_config(None, values={"model": to_dict(seed.model)}).model == seed.model


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("train.lr=.nan", "train.lr", "a finite number"),
        ("train.lr=.inf", "train.lr", "a finite number"),
        ("train.lr=1e400", "train.lr", "a finite number"),
        ("postprocess.min_area=2.5", "postprocess.min_area", "an integer"),
        ("model.input_size=big", "model.input_size", "an integer"),
        ("data.mpp=abc", "data.mpp", "a finite number"),
        ("data.mpp=.nan", "data.mpp", "a finite number"),
        ("model.lora={rank: 2, magic: 1}", "model.lora.magic", "Allowed keys: rank, alpha"),
        ("data.seed=2024-13-01", None, "cannot read the value"),
    ],
)
def test_malformed_values_name_the_key(override: str, key: str | None, expected: str) -> None:
    with pytest.raises(NucleisamError) as info:
        load_run_config(None, [override])
    assert expected in str(info.value)
    if key is not None:
        assert isinstance(info.value, ConfigError) and info.value.key == key
        assert f"'{key}'" in str(info.value)
