"""Training data: cache (memory and disk), vague masks, reproducible augmentation, padding collate."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch

from nucleisam.train.dataset import EpochSampler, SampleCache, TrainingDataset, pad_collate
from train_helpers import simple_targets, write_samples


class CountingTargets:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        return simple_targets(labels)


def flip_augment(image, labels, vague=None, maps=None, *, rng):
    """Rotations and flips with the data layer's Augmenter call signature."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))

    def tf(a):
        if a is None:
            return None
        a = np.rot90(a, k)
        return np.ascontiguousarray(a[:, ::-1] if flip else a)

    return SimpleNamespace(
        image=tf(image), labels=tf(labels), vague=tf(vague), maps={k: tf(v) for k, v in maps.items()}
    )


def test_memory_cache_and_tensors(tmp_path: Path) -> None:
    samples = write_samples(tmp_path, count=2)
    counter = CountingTargets()
    cache = SampleCache("memory", targets_fn=counter)
    cache.prefill(samples)
    assert counter.calls == 2
    dataset = TrainingDataset(samples, cache)
    item = dataset[1]
    assert counter.calls == 2  # served from memory
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].max() > 1.0  # 0–255 scale, not normalised
    labels = samples[1].load_labels()
    assert torch.equal(item["foreground"][0], torch.from_numpy((labels > 0).astype(np.float32)))
    # Tile 1 has a vague square in its top-left corner: valid is 0 exactly there.
    assert item["valid"].shape == (1, 32, 32)
    assert item["valid"][0, :8, :8].sum() == 0 and item["valid"].sum() == 32 * 32 - 64
    assert dataset[0]["valid"].sum() == 32 * 32  # no vague mask → every pixel counts


def test_disk_cache_is_reused_and_invalidated(tmp_path: Path) -> None:
    samples = write_samples(tmp_path / "data", count=2)
    first = CountingTargets()
    SampleCache("disk", tmp_path / "cache", targets_fn=first).prefill(samples)
    assert first.calls == 2 and len(list((tmp_path / "cache").glob("*.npz"))) == 2
    second = CountingTargets()
    cache = SampleCache("disk", tmp_path / "cache", targets_fn=second)
    data = cache.get(samples[0])
    assert second.calls == 0
    expected = simple_targets(samples[0].load_labels())
    for key, value in expected.items():
        np.testing.assert_array_equal(data.targets[key], value)
    # A changed label file gets new targets, not the stale cached ones.
    labels = samples[1].load_labels()
    labels[labels == 1] = 0
    tifffile.imwrite(samples[1].labels_path, labels.astype(np.uint16))
    SampleCache("disk", tmp_path / "cache", targets_fn=second).get(samples[1])
    assert second.calls == 1


def test_augmentation_is_reproducible_and_consistent(tmp_path: Path) -> None:
    samples = write_samples(tmp_path, count=3)
    counter = CountingTargets()
    dataset = TrainingDataset(
        samples, SampleCache("memory", targets_fn=counter), augment=flip_augment, seed=5
    )
    views = {epoch: dataset[(epoch, 1)] for epoch in range(6)}
    base = TrainingDataset(samples, dataset.cache)[1]
    again = dataset[(3, 1)]
    for key in ("image", "foreground", "valid"):
        assert torch.equal(views[3][key], again[key])
    assert any(not torch.equal(views[0]["image"], views[e]["image"]) for e in range(1, 6))
    for view in views.values():
        # Targets follow the augmented image: nuclei are the dark pixels, vague area the invalid ones.
        dark = view["image"].mean(0) < 120
        assert torch.equal(dark, view["foreground"][0] > 0)
        assert view["valid"].sum() == 32 * 32 - 64
        # The distance maps moved with the image: the transform that maps the original image onto the
        # augmented one maps the original boundary-distance map onto the augmented one.
        transforms = [(k, f) for k in range(4) for f in (False, True)]
        matched = 0
        for k, f in transforms:

            def tf(a, k=k, f=f):
                a = torch.rot90(a, k, dims=(-2, -1))
                return torch.flip(a, dims=(-1,)) if f else a

            if torch.equal(tf(base["image"]), view["image"]):
                matched += 1
                assert torch.equal(tf(base["boundary_distance"]), view["boundary_distance"])
                assert torch.equal(tf(base["center_distance"]), view["center_distance"])
        assert matched >= 1
    assert counter.calls == 1  # targets computed once per tile, never per augmentation


def test_epoch_sampler_tags_items() -> None:
    sampler = EpochSampler(torch.utils.data.SequentialSampler(range(3)))
    sampler.set_epoch(4)
    assert list(sampler) == [(4, 0), (4, 1), (4, 2)] and len(sampler) == 3


def test_pad_collate_marks_padding_invalid() -> None:
    small = {"image": torch.ones(3, 4, 5), "valid": torch.ones(1, 4, 5), "index": 0}
    large = {"image": torch.ones(3, 6, 6), "valid": torch.ones(1, 6, 6), "index": 1}
    batch = pad_collate([small, large])
    assert batch["image"].shape == (2, 3, 6, 6) and batch["valid"].shape == (2, 1, 6, 6)
    assert batch["valid"][0].sum() == 20 and batch["valid"][1].sum() == 36
    assert batch["image"][0, :, 4:, :].abs().sum() == 0
    assert batch["index"].tolist() == [0, 1]


def test_cache_rejects_bad_mode() -> None:
    with pytest.raises(ValueError, match="cache mode"):
        SampleCache("ram")
    with pytest.raises(ValueError, match="directory"):
        SampleCache("disk")


def test_with_the_data_layers_augmenter(tmp_path: Path) -> None:
    from nucleisam.data import Augmenter

    samples = write_samples(tmp_path, count=2, size=48)
    cache = SampleCache("memory", targets_fn=simple_targets)
    augmenter = Augmenter(p_scale=1.0, p_stain=1.0)  # zoom and stain jitter on every draw
    dataset = TrainingDataset(samples, cache, augment=augmenter, seed=2)
    plain = TrainingDataset(samples, cache)[1]
    first, again = dataset[(4, 1)], dataset[(4, 1)]
    for key in ("image", "foreground", "center_distance", "boundary_distance", "valid"):
        assert torch.equal(first[key], again[key]), key
        assert first[key].shape == plain[key].shape
    assert not torch.equal(first["image"], plain["image"])
    foreground = first["foreground"][0] > 0
    assert foreground.any()
    # The zoomed distance maps stay on the (nearest-neighbour) zoomed nuclei, up to interpolation at edges.
    inside = first["boundary_distance"][0] > 0.05
    assert (inside & ~foreground).sum() <= 0.05 * inside.sum()
    assert 0 < (first["valid"] == 0).sum() < first["valid"].numel()  # the vague square moved with the tile
