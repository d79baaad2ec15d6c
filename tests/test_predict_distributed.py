"""The per-process caches of :mod:`nucleisam.predict.distributed` (open slides, loaded models) on a
process that outlives a run, as a worker of an external Dask cluster does: a file rewritten at the
same path is read again, not served from the copy opened before."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from nucleisam.errors import NucleisamError
from nucleisam.predict import distributed
from nucleisam.predict.distributed import MethodSpec, cached_predictor, cached_slide
from slides_helpers import sample_tiles, write_slide


@pytest.fixture(autouse=True)
def empty_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with this process's caches empty and leaves the suite's own untouched."""
    monkeypatch.setattr(distributed, "_SLIDES", OrderedDict())
    monkeypatch.setattr(distributed, "_PREDICTORS", {})


def test_a_slide_rewritten_at_the_same_path_gives_its_new_pixels(sample_root: Path, tmp_path: Path) -> None:
    first, second = sample_tiles(sample_root, 2)
    path = write_slide(tmp_path / "slide.tif", first, factors=(1, 2))
    old = cached_slide(str(path), None)
    np.testing.assert_array_equal(old.read_region((0, 0), 0, (512, 512)), first)
    assert cached_slide(str(path), None) is old  # unchanged file: the open slide is reused

    # Rewritten in place (the same inode), as a rerun of the scanner's export would.
    write_slide(path, second, factors=(1, 2))
    new = cached_slide(str(path), None)
    assert new is not old
    np.testing.assert_array_equal(new.read_region((0, 0), 0, (512, 512)), second)
    with pytest.raises(NucleisamError, match="is closed"):  # the replaced slide's file was closed
        old.read_region((0, 0), 0, (8, 8))

    # Replaced by a rename (a new inode), as an atomic copy would, with the same bytes as before.
    write_slide(tmp_path / "copy.tif", first, factors=(1, 2))
    os.replace(tmp_path / "copy.tif", path)
    np.testing.assert_array_equal(cached_slide(str(path), None).read_region((0, 0), 0, (512, 512)), first)
    assert len(distributed._SLIDES) == 1


@pytest.mark.usefixtures("torch_one_thread")
def test_an_adapter_rewritten_at_the_same_path_is_loaded_again(tmp_path: Path) -> None:
    """The predictor cache is keyed on the method's spec, which names the adapter by path."""
    import warnings

    from nucleisam.config import ModelConfig
    from nucleisam.model import build_model, save_adapter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random base weights are the point here
        model = build_model(ModelConfig(input_size=256, weights="none"))
    path = tmp_path / "adapter.safetensors"
    save_adapter(model, path, train_mpp=0.25)
    spec = MethodSpec(kind="model", adapter=str(path), device="cpu", tile=256)
    old = cached_predictor(spec)
    assert old.mpp == 0.25 and cached_predictor(spec) is old

    save_adapter(model, path, train_mpp=0.5)
    new = cached_predictor(spec)
    assert new is not old and new.mpp == 0.5
    assert len(distributed._PREDICTORS) == 1  # the old model is not kept beside the new one
