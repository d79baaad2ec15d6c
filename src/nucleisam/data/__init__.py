"""Data layer: readers (NuInsSeg, folders, XML), folds, transforms, augmentation, training targets."""

from nucleisam.data.imageio import IMAGE_SUFFIXES, read_rgb, to_rgb_uint8
from nucleisam.data.targets import instance_targets

__all__ = ["IMAGE_SUFFIXES", "instance_targets", "read_rgb", "to_rgb_uint8"]
