"""The configuration mechanism: files, overrides, type checking, round trip; the shipped run configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from malformed import JUNK, malformed
from nucleisam.config import (
    Config,
    apply_overrides,
    from_dict,
    load_config,
    load_run_config,
    save_config,
    to_dict,
)
from nucleisam.errors import NucleisamError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the non-mapping values of a nested dict."""
    keys = []
    for name, value in tree.items():
        key = f"{prefix}{name}"
        keys += _leaf_keys(value, f"{key}.") if isinstance(value, dict) else [key]
    return keys


@dataclass(frozen=True)
class Inner:
    size: int = 3
    names: tuple[str, ...] = ("a", "b")
    pair: tuple[int, float] = (1, 2.0)


@dataclass(frozen=True)
class Outer:
    mode: Literal["x", "y"] = "x"
    scale: float = 1.0
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults_and_nested_types() -> None:
    cfg = from_dict(Outer, {"mode": "y", "scale": 2, "inner": {"names": ["q"], "pair": [4, 5]}})
    assert cfg == Outer(mode="y", scale=2.0, inner=Inner(names=("q",), pair=(4, 5.0)))
    assert isinstance(cfg.scale, float) and isinstance(cfg.inner.pair[1], float)
    assert to_dict(cfg) == {
        "mode": "y",
        "scale": 2.0,
        "limit": None,
        "inner": {"size": 3, "names": ["q"], "pair": [4, 5.0]},
    }
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"mdoe": "x"}, "unknown configuration key 'mdoe'. Allowed keys: mode, scale, limit, inner"),
        ({"inner": {"sise": 1}}, "'inner.sise' in section 'inner'. Allowed keys: size, names, pair"),
        ({"mode": "z"}, "'mode': got 'z' (str), expected one of 'x', 'y'"),
        ({"limit": "many"}, "'limit'"),
        ({"inner": {"size": True}}, "'inner.size': got True (bool), expected an integer"),
        ({"inner": {"pair": [1]}}, "'inner.pair'"),
        ({"inner": {"names": [1]}}, "'inner.names[0]'"),
        ({"inner": 5}, "'inner': got 5 (int), expected a mapping of Inner options"),
    ],
)
def test_bad_keys_and_types_name_the_key(data: dict, fragment: str) -> None:
    with pytest.raises(NucleisamError) as info:
        from_dict(Outer, data)
    assert fragment in str(info.value)


def test_overrides_parse_yaml_values() -> None:
    data = apply_overrides(
        to_dict(Outer()), ["inner.size=7", "limit=null", "scale=1e-3", "inner.names=[u, v]"]
    )
    cfg = from_dict(Outer, data)
    assert cfg.inner.size == 7 and cfg.limit is None and cfg.scale == pytest.approx(1e-3)
    assert cfg.inner.names == ("u", "v")
    for bad in ["novalue", "=3", "a..b=1"]:
        with pytest.raises(NucleisamError, match="KEY=VALUE"):
            apply_overrides({}, [bad])


def test_yaml_and_toml_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("scale: 0.5\ninner:\n  size: 9\n")
    (tmp_path / "a.toml").write_text('mode = "y"\n[inner]\nnames = ["t"]\n')
    assert load_config(Outer, tmp_path / "a.yaml", ["inner.size=10"]) == Outer(
        scale=0.5, inner=Inner(size=10)
    )
    assert load_config(Outer, tmp_path / "a.toml") == Outer(mode="y", inner=Inner(names=("t",)))
    (tmp_path / "bad.yaml").write_text("scale: [1\n")
    with pytest.raises(NucleisamError, match="cannot parse"):
        load_config(Outer, tmp_path / "bad.yaml")
    with pytest.raises(NucleisamError, match="not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(NucleisamError, match="suffix"):
        load_config(Outer, tmp_path / "a.json")


def test_run_config_validation_and_round_trip(tmp_path: Path) -> None:
    cfg = load_run_config(None, ["train.lr=1e-4", "data.group=organ", "train.grad_clip=null"])
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.data.group == "organ" and cfg.train.grad_clip is None
    save_config(cfg, tmp_path / "config.yaml")
    assert load_run_config(tmp_path / "config.yaml") == cfg
    for override, fragment in [
        ("train.epochs=0", "'train.epochs' must be at least 1"),
        ("train.device=gpu", "'train.device'"),
        ("train.loss.distance_loss=l3", "'train.loss.distance_loss'"),
        ("data.masks=/x", "'data.masks' must be given with data.images"),
    ]:
        with pytest.raises(NucleisamError, match=fragment.replace(".", r"\.")):
            load_run_config(None, [override])


@pytest.mark.parametrize("name", ["default.yaml", "demo.yaml", "seed.yaml"])
def test_shipped_configs_load(name: str) -> None:
    path = REPO_ROOT / "configs" / name
    cfg = load_run_config(path)
    assert isinstance(cfg, Config)
    # Every key in the file is one the configuration knows (from_dict would have refused others)
    # and the file sets at least one value.
    assert yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class Derived:
    mode: str = "a"
    head: str | None = None  # resolved from mode when left unset

    def __post_init__(self) -> None:
        if self.head is None:
            object.__setattr__(self, "head", "x" if self.mode == "a" else "y")


@dataclass(frozen=True)
class HasDerived:
    part: Derived = field(default_factory=Derived)


def test_derived_defaults_follow_overrides() -> None:
    assert load_config(HasDerived, None, ["part.mode=b"]).part == Derived(mode="b", head="y")
    assert load_config(HasDerived, None, ["part.mode=b", "part.head=x"]).part.head == "x"


def test_seed_config_reproduces_the_notebooks_parameter_counts() -> None:
    import warnings

    from nucleisam.model import build_model

    config = load_run_config(REPO_ROOT / "configs" / "seed.yaml", ["model.weights=none"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(config.model)
    total = next(row for row in model.parameter_table() if row["part"] == "total")
    assert (total["parameters"], total["trainable"]) == (10_254_156, 4_182_404)
    assert config.train.loss.dice_weight == 0.0 and config.train.epochs == 10


def test_model_section_resolves_after_overrides() -> None:
    config = load_run_config(None, ["model.mode=seed"])
    assert config.model.head == "sam" and config.model.lora.alpha == 1.0
    with pytest.raises(NucleisamError, match=r"'model\.lora\.rank'"):
        load_run_config(None, ["model.lora.rank=x"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(malformed(to_dict(Config())), JUNK))
def test_malformed_config_mappings_raise_nucleisam_error_only(data: object) -> None:
    try:
        config = from_dict(Config, data)  # type: ignore[arg-type]
    except NucleisamError as exc:
        assert "configuration" in str(exc)
    else:  # whatever is accepted is a valid tree that survives saving
        assert from_dict(Config, to_dict(config)) == config


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(_leaf_keys(to_dict(Config())))), st.text(max_size=20))
def test_any_set_text_gives_a_config_or_a_nucleisam_error(key: str, text: str) -> None:
    try:
        load_run_config(None, [f"{key}={text}"])
    except NucleisamError as exc:
        assert key in str(exc) or "--set" in str(exc)
