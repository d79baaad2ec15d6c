"""Counting what a data set holds: images, nuclei, organs, tiles with ambiguous areas, problems."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from nucleisam.data.datasets import Dataset
from nucleisam.data.labels import count_instances

#: A vague mask covering more than this share of its tile counts as a substantial ambiguous area.
#: In NuInsSeg many tiles carry only a tiny placeholder blob (≈40–110 px, touching no nucleus).
SUBSTANTIAL_VAGUE_FRACTION = 0.01


@dataclass
class OrganCount:
    images: int = 0
    nuclei: int = 0


@dataclass
class DatasetSummary:
    """Counts over a loaded data set; nuclei = distinct non-zero ids per image, summed."""

    root: str | None
    layout: str
    images: int
    nuclei: int
    organs: dict[str, OrganCount]
    tiles_with_vague_areas: int
    tiles_with_substantial_vague_areas: int
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["substantial_vague_fraction"] = SUBSTANTIAL_VAGUE_FRACTION
        return data


def summarize(dataset: Dataset) -> DatasetSummary:
    """Read every label map and vague mask of ``dataset`` and count its contents.

    Raises :class:`~nucleisam.errors.NucleisamError` naming the file when a label map is invalid
    (float values, negative ids, a binary mask without ``binary_masks``).
    """
    organs: dict[str, OrganCount] = {}
    nuclei = vague = substantial = 0
    for sample in dataset.samples:
        count = count_instances(sample.load_labels())
        nuclei += count
        organ = organs.setdefault(sample.group, OrganCount())
        organ.images += 1
        organ.nuclei += count
        ambiguous = sample.load_ambiguous()
        if ambiguous is not None and ambiguous.any():
            vague += 1
            substantial += int(ambiguous.mean() > SUBSTANTIAL_VAGUE_FRACTION)
    return DatasetSummary(
        root=None if dataset.root is None else str(dataset.root),
        layout=dataset.layout,
        images=len(dataset.samples),
        nuclei=nuclei,
        organs=dict(sorted(organs.items())),
        tiles_with_vague_areas=vague,
        tiles_with_substantial_vague_areas=substantial,
        problems=list(dataset.problems),
    )
