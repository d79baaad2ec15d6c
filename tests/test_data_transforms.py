"""Resizing to/from the model input and augmentation that keeps image, labels and masks aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nucleisam.data import (
    Augmenter,
    from_model_output,
    load_nuinsseg,
    longest_side_shape,
    resize_image,
    resize_map,
    resize_nearest,
    to_model_input,
)

NO_COLOUR = {"p_stain": 0.0, "p_blur": 0.0}
Tile = tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def tile(sample_root: Path) -> Tile:
    """Image, labels and vague mask of a bundled tile that has a real vague area."""
    sample = next(s for s in load_nuinsseg(sample_root) if s.stem == "human_spleen_05")
    vague = sample.load_vague()
    assert vague is not None
    return sample.load_image(), sample.load_labels(), vague


def test_longest_side_shape_follows_sam_rounding() -> None:
    assert longest_side_shape(512, 512, 1024) == (1024, 1024)
    assert longest_side_shape(300, 200, 1024) == (1024, 683)  # 200 * 1024 / 300 = 682.67
    assert longest_side_shape(1000, 1500, 1024) == (683, 1024)


def test_model_input_round_trip(tile: Tile) -> None:
    image, labels, vague = tile
    model_image = to_model_input(image, 1024)
    assert model_image.shape == (1024, 1024, 3) and model_image.dtype == np.uint8
    model_labels = to_model_input(labels, 1024, kind="labels")
    assert model_labels.dtype == np.int32
    np.testing.assert_array_equal(np.unique(model_labels), np.unique(labels))
    np.testing.assert_array_equal(from_model_output(model_labels, (512, 512), 1024, kind="labels"), labels)
    model_mask = to_model_input(vague, 1024, kind="mask")
    np.testing.assert_array_equal(from_model_output(model_mask, (512, 512), 1024, kind="mask"), vague)
    back = from_model_output(model_image, (512, 512), 1024, kind="image")
    assert np.abs(back.astype(int) - image.astype(int)).mean() < 3  # bilinear up, area down

    # A non-square crop: padding at the bottom/right only, zeros, and an exact way back for labels.
    crop = labels[:300, :200]
    padded = to_model_input(crop, 1024, kind="labels")
    assert padded.shape == (1024, 1024)
    assert not padded[:, 683:].any() and padded[:, :683].any()
    np.testing.assert_array_equal(from_model_output(padded, (300, 200), 1024, kind="labels"), crop)
    probability = from_model_output(to_model_input((crop > 0).astype(np.float32), 1024, kind="map"),
                                    (300, 200), 1024, kind="map")
    assert probability.dtype == np.float32 and np.abs(probability - (crop > 0)).mean() < 0.02


def test_area_and_bilinear_resizing() -> None:
    blocks = np.kron(np.array([[0, 100], [200, 50]], np.uint8), np.ones((4, 4), np.uint8))
    image = np.dstack([blocks] * 3)
    np.testing.assert_array_equal(resize_image(image, (2, 2))[..., 0], [[0, 100], [200, 50]])
    ramp = np.tile(np.arange(0, 256, 32, dtype=np.float32), (4, 1))
    resized = resize_map(ramp, (4, 16))
    assert resized.dtype == np.float32 and np.all(np.diff(resized[0]) >= 0)
    ids = np.arange(12, dtype=np.int32).reshape(3, 4) * 1000
    np.testing.assert_array_equal(resize_nearest(ids, (6, 8))[::2, ::2], ids)


def _coordinate_image(size: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red/green channels store 2 × (row, column): bilinear resampling keeps it exact."""
    rows, cols = np.mgrid[:size, :size]
    return np.stack([rows * 2, cols * 2, np.zeros_like(rows)], axis=-1).astype(np.uint8), rows


@pytest.mark.parametrize("seed", range(12))
def test_augmented_labels_stay_aligned_with_the_image(tile: Tile, seed: int) -> None:
    """Every output pixel's labels, vague flag and maps come from the source pixel the image shows."""
    _, labels, vague = tile
    top, left = 40, 320  # a 128x128 window that contains nuclei and a vague region
    labels, vague = labels[top:top + 128, left:left + 128], vague[top:top + 128, left:left + 128]
    assert vague.any() and len(np.unique(labels)) > 5
    image, rows = _coordinate_image(128)
    maps = {"inside": np.ones((128, 128), np.float32), "row": rows.astype(np.float32)}
    out = Augmenter(p_hflip=0.5, p_vflip=0.5, p_rot90=0.5, p_scale=0.8, scale_range=(0.8, 1.25),
                    **NO_COLOUR)(image, labels, vague, maps, rng=seed)

    source_row, source_col = out.image[..., 0] / 2.0, out.image[..., 1] / 2.0
    covered = out.maps["inside"] >= 1.0 - 1e-6  # not in the zoom-out border
    # Nearest-neighbour sampling is decided where the source coordinate is clearly off a half pixel.
    clear = covered & (np.abs(source_row % 1 - 0.5) > 0.3) & (np.abs(source_col % 1 - 0.5) > 0.3)
    assert clear.sum() > 1000
    r = np.clip(np.rint(source_row).astype(int), 0, 127)
    c = np.clip(np.rint(source_col).astype(int), 0, 127)
    np.testing.assert_array_equal(out.labels[clear], labels[r, c][clear])
    np.testing.assert_array_equal(out.vague[clear], vague[r, c][clear])
    assert np.abs(out.maps["row"][covered] - source_row[covered]).max() <= 0.26  # uint8 rounding of 2·row
    assert out.labels.dtype == np.int32 and out.vague.dtype == np.bool_
    assert out.maps["row"].dtype == np.float32 and out.image.shape == (128, 128, 3)
    assert set(np.unique(out.labels)) <= set(np.unique(labels))  # ids kept, none invented


def test_flips_and_rotations_are_exact_and_keep_every_id(tile: Tile) -> None:
    image, labels, vague = tile
    only = {"p_hflip": 0.0, "p_vflip": 0.0, "p_rot90": 0.0, "p_scale": 0.0, **NO_COLOUR}
    out = Augmenter(**{**only, "p_hflip": 1.0})(image, labels, vague, rng=0)
    np.testing.assert_array_equal(out.image, image[:, ::-1])
    np.testing.assert_array_equal(out.labels, labels[:, ::-1])
    np.testing.assert_array_equal(out.vague, vague[:, ::-1])
    out = Augmenter(**{**only, "p_vflip": 1.0})(image, labels, rng=0)
    np.testing.assert_array_equal(out.labels, labels[::-1])
    rotations = set()
    for seed in range(20):
        out = Augmenter(**{**only, "p_rot90": 1.0})(image, labels, vague, rng=seed)
        k = next(k for k in (1, 2, 3) if np.array_equal(out.labels, np.rot90(labels, k)))
        rotations.add(k)
        np.testing.assert_array_equal(out.image, np.rot90(image, k))
        np.testing.assert_array_equal(out.vague, np.rot90(vague, k))
        np.testing.assert_array_equal(np.bincount(out.labels.ravel()), np.bincount(labels.ravel()))
    assert rotations == {1, 2, 3}
    # A non-square tile can only turn by 180 degrees and keep its shape.
    out = Augmenter(**{**only, "p_rot90": 1.0})(image[:200], labels[:200], rng=1)
    np.testing.assert_array_equal(out.labels, labels[:200][::-1, ::-1])


def test_colour_transforms_touch_only_the_image(tile: Tile) -> None:
    image, labels, vague = tile
    geometry_off = {"p_hflip": 0.0, "p_vflip": 0.0, "p_rot90": 0.0, "p_scale": 0.0}
    identity = Augmenter(**geometry_off, p_stain=1.0, stain_alpha=0.0, stain_beta=0.0, p_blur=0.0)
    np.testing.assert_array_equal(identity(image, labels, rng=0).image, image)  # the OD round trip is exact
    for name, config in [("stain", {"p_stain": 1.0, "p_blur": 0.0, "stain_alpha": 0.1, "stain_beta": 0.1}),
                         ("blur", {"p_stain": 0.0, "p_blur": 1.0, "blur_sigma": (1.0, 1.0)})]:
        out = Augmenter(**geometry_off, **config)(image, labels, vague, rng=4)
        np.testing.assert_array_equal(out.labels, labels)
        np.testing.assert_array_equal(out.vague, vague)
        change = np.abs(out.image.astype(int) - image.astype(int)).mean()
        assert 0.5 < change < 25, name  # visible but mild
        gray, gray_out = image.mean(-1), out.image.mean(-1)
        assert np.corrcoef(gray.ravel(), gray_out.ravel())[0, 1] > 0.9, name


def test_full_augmentation_keeps_nuclei_on_dark_pixels(tile: Tile) -> None:
    """On the real tile, haematoxylin-dark pixels stay inside the (augmented) nuclei."""
    image, labels, vague = tile
    brightness = image.astype(float).mean(-1)
    contrast = brightness[labels == 0].mean() - brightness[labels > 0].mean()
    assert contrast > 15
    # Zoom-in only: a zoom-out's white border would add contrast to any labelling.
    augmenter = Augmenter(p_hflip=0.5, p_vflip=0.5, p_rot90=0.5, p_scale=1.0, scale_range=(1.0, 1.15),
                          p_stain=1.0, p_blur=1.0)

    def nuclear_contrast(bright: np.ndarray, nuclei: np.ndarray) -> float:
        return float(bright[~nuclei].mean() - bright[nuclei].mean())

    for seed in range(4):
        out = augmenter(image, labels, vague, rng=seed)
        bright = out.image.astype(float).mean(-1)
        aligned = nuclear_contrast(bright, out.labels > 0)
        assert aligned > 0.7 * contrast
        # Labels in a wrong orientation would lose most of the contrast.
        assert aligned > 3 * nuclear_contrast(bright, out.labels[::-1] > 0)
        assert aligned > 3 * nuclear_contrast(bright, np.rot90(out.labels) > 0)


def test_augmentation_is_reproducible_from_a_seed(tile: Tile) -> None:
    image, labels, vague = tile
    augmenter = Augmenter(p_scale=1.0, p_stain=1.0, p_blur=1.0)
    first = augmenter(image, labels, vague, rng=7)
    again = augmenter(image, labels, vague, rng=np.random.default_rng(7))
    other = augmenter(image, labels, vague, rng=8)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.vague, again.vague)
    assert not np.array_equal(first.image, other.image)
    assert first.image.shape == image.shape and first.labels.shape == labels.shape


def test_mismatched_shapes_are_refused(tile: Tile) -> None:
    image, labels, _ = tile
    with pytest.raises(ValueError, match="image must be uint8"):
        Augmenter()(image[:100], labels, rng=0)
    with pytest.raises(ValueError, match="vague"):
        Augmenter()(image, labels, np.zeros((5, 5), bool), rng=0)
