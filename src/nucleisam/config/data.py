"""The ``data`` section of a run's configuration: which images, at what resolution, which folds, how
they are cached.

Shared by every command that runs over folds (``nucleisam cv``/``train`` and ``nucleisam baseline``),
so their ``config.yaml`` files describe the data the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nucleisam.config.core import require

#: Microns per pixel outside this range are not a microscope's: 72 or 96 dpi written by image
#: editors, or a unit-less value. Such a value read from a file is treated as unknown rather than
#: trusted, and ``data.mpp`` must lie inside it.
PLAUSIBLE_MPP = (0.01, 50.0)
#: Level-0 resolution of the NuInsSeg tiles, in µm per pixel. NuInsSeg
#: (Mahbod et al., Sci Data 11:295, 2024, doi:10.1038/s41597-024-03117-2) tiles come from 40× scans
#: on a TissueGnostics scanner (dataset README, github.com/masih4/NuInsSeg). No pixel size was found
#: in the sources we could consult (the README and the indexed pages of the paper), so this is the
#: conventional 0.25 µm/px of a 40× scan: an approximation, to replace if the paper states the value.
NUINSSEG_MPP = 0.25


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from, how they are split into folds, and how decoded data is cached.

    Either ``root`` (a NuInsSeg-layout folder) or ``images`` with ``masks`` (folders paired by stem;
    ``masks`` may be left out when Aperio ``.xml`` annotations sit beside the images).
    ``k``/``seed``/``group`` define the outer folds (defaults: the NuInsSeg authors' split),
    ``val_fraction``/``val_seed`` the inner validation split of each training fold (stratified by
    organ) used for checkpoint selection and post-processing tuning. ``mpp`` is the images' resolution
    in microns per pixel, recorded as a trained model's ``train_mpp`` (slides are read at that scale);
    ``None`` means "what the images record when they all agree, else NuInsSeg's 0.25" and is resolved
    before a run saves its ``config.yaml`` (:func:`nucleisam.data.resolve_data_mpp`). ``cache``:
    decoded images and training targets are kept in memory ("memory"), also written to ``cache_dir``
    as ``.npz`` files and reused by later runs ("disk"), or recomputed every time ("none").
    """

    root: str | None = None
    images: str | None = None
    masks: str | None = None
    binary_masks: bool = False
    strict: bool = False
    mpp: float | None = None
    k: int = 5
    seed: int = 19
    group: Literal["organ"] | None = None
    val_fraction: float = 0.125
    val_seed: int = 0
    cache: Literal["memory", "disk", "none"] = "memory"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.mpp is not None:
            low, high = PLAUSIBLE_MPP
            require(
                low <= self.mpp <= high,
                "data.mpp",
                f"a resolution in microns per pixel between {low} and {high} "
                "(0.25 for a 40x scan, 0.5 for 20x)",
                self.mpp,
            )
        require(self.k >= 2, "data.k", "at least 2", self.k)
        require(0 <= self.seed < 2**32, "data.seed", "in [0, 2**32)", self.seed)
        require(0 <= self.val_seed < 2**32, "data.val_seed", "in [0, 2**32)", self.val_seed)
        require(0.0 < self.val_fraction < 1.0, "data.val_fraction", "in (0, 1)", self.val_fraction)
        require(
            self.masks is None or self.images is not None, "data.masks", "given with data.images", self.masks
        )
        require(
            self.root is None or self.images is None,
            "data.root/data.images",
            "one or the other, not both",
            (self.root, self.images),
        )
