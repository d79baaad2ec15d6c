"""Counting what a data set holds: images, nuclei, organs, tiles with vague areas, problems, and the
resolution its images record and a run would use."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from nucleisam.data.datasets import Dataset, Sample
from nucleisam.data.labels import count_instances
from nucleisam.data.resolution import decide_data_mpp, read_recorded
from nucleisam.errors import NucleisamError
from nucleisam.utils.pool import available_cores

#: A vague mask covering more than this share of its tile counts as a substantial vague area.
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
    #: ``recorded``: what the images record (state agree / differ / partly / none, the values);
    #: ``mpp``, ``source``, ``warning``: what a run on this data (with the same data.mpp) would use.
    resolution: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["substantial_vague_fraction"] = SUBSTANTIAL_VAGUE_FRACTION
        return data


@dataclass(frozen=True)
class SampleCheck:
    """What fully decoding one sample found: its nuclei and vague share, or the problem."""

    sample: Sample
    nuclei: int = 0
    vague_fraction: float | None = None
    problem: str | None = None


def check_sample(sample: Sample) -> SampleCheck:
    """Decode the image, label map and vague mask of ``sample`` completely (a truncated file passes
    a header read, not this) and check that their sizes agree."""
    try:
        height, width = sample.load_image().shape[:2]
        labels = sample.load_labels()
        vague = sample.load_vague()
    except NucleisamError as exc:
        return SampleCheck(sample, problem=str(exc))
    for what, array in (("label map", labels), ("vague mask", vague)):
        if array is not None and array.shape[:2] != (height, width):
            path = sample.labels_path if what == "label map" else sample.vague_path
            return SampleCheck(
                sample,
                problem=f"{what} {path} is {array.shape[1]}×{array.shape[0]} px but its image "
                f"{sample.image_path} is {width}×{height} px",
            )
    fraction = None if vague is None or not vague.any() else float(vague.mean())
    return SampleCheck(sample, nuclei=count_instances(labels), vague_fraction=fraction)


def check_samples(samples: Sequence[Sample], *, workers: int | None = None) -> list[SampleCheck]:
    """:func:`check_sample` for every sample, in order, decoding ``workers`` files at a time
    (default: up to 8, one per core; the decoders release the GIL)."""
    workers = workers or min(8, available_cores())
    if workers == 1 or len(samples) < 2:
        return [check_sample(sample) for sample in samples]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(check_sample, samples))


def usable_dataset(dataset: Dataset, checks: Sequence[SampleCheck], *, strict: bool) -> Dataset:
    """``dataset`` without the samples whose files do not decode, those listed as problems beside
    the pairing problems; with ``strict`` any problem is an error (nothing has been written yet)."""
    problems = list(dataset.problems) + [check.problem for check in checks if check.problem]
    kept = [check.sample for check in checks if check.problem is None]
    usable = dataclasses.replace(dataset, samples=kept, problems=problems)
    if strict:
        usable.raise_for_problems()
    return usable


def summarize(dataset: Dataset, *, workers: int | None = None, mpp: float | None = None) -> DatasetSummary:
    """Fully decode every sample of ``dataset`` and count its contents; files that do not decode
    (truncated, float or negative label maps, empty XML, mismatched sizes) are listed as problems
    and left out of the counts instead of stopping the count. The resolution is decided as a run
    with ``data.mpp`` = ``mpp`` decides it, over the same images (those with problems included)."""
    checks = check_samples(dataset.samples, workers=workers)
    organs: dict[str, OrganCount] = {}
    nuclei = vague = substantial = 0
    for check in checks:
        if check.problem is not None:
            continue
        nuclei += check.nuclei
        organ = organs.setdefault(check.sample.group, OrganCount())
        organ.images += 1
        organ.nuclei += check.nuclei
        if check.vague_fraction is not None:
            vague += 1
            substantial += int(check.vague_fraction > SUBSTANTIAL_VAGUE_FRACTION)
    return DatasetSummary(
        root=None if dataset.root is None else str(dataset.root),
        layout=dataset.layout,
        images=sum(check.problem is None for check in checks),
        nuclei=nuclei,
        organs=dict(sorted(organs.items())),
        tiles_with_vague_areas=vague,
        tiles_with_substantial_vague_areas=substantial,
        problems=list(dataset.problems) + [check.problem for check in checks if check.problem],
        resolution=_resolution(dataset, mpp),
    )


def _resolution(dataset: Dataset, mpp: float | None) -> dict[str, Any]:
    recorded = read_recorded([sample.image_path for sample in dataset.samples])
    resolution = decide_data_mpp(mpp, recorded, nuinsseg_layout=dataset.layout == "nuinsseg")
    return {"recorded": recorded.to_dict(), "mpp": resolution.mpp, "source": resolution.source,
            "warning": resolution.warning}
