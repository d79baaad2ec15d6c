"""Data layer: readers (NuInsSeg, folders, XML), folds, transforms, augmentation, training targets."""

from nucleisam.data.imageio import IMAGE_SUFFIXES, read_rgb, to_rgb_uint8

__all__ = ["IMAGE_SUFFIXES", "read_rgb", "to_rgb_uint8"]
