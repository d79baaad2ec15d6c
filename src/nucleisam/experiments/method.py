"""What the cross-validation runner asks of a method: fit on a fold, tune on its validation images,
segment test images.

:func:`nucleisam.experiments.cv.run_cv` owns everything around a method (folds, resume, scoring with
and without vague areas, ``per_image.csv``, ``metrics.json``, overlays, summary, report); a method
only turns images into instances. Two implement :class:`Method`: the fine-tuned model
(:class:`nucleisam.experiments.model_method.ModelMethod`) and the classical baseline
(:class:`nucleisam.experiments.classical_method.ClassicalMethod`). Nothing here imports torch, so a
run of the classical method never does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from nucleisam.data.datasets import Sample
from nucleisam.experiments.report import REPORT_METRICS
from nucleisam.experiments.runs import Log
from nucleisam.metrics import MetricAccumulator


@dataclass
class FoldSplit:
    """The samples of one fold; ``test`` is empty for a final model trained on everything."""

    index: int
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]


class LabelledTile(NamedTuple):
    """One decoded tile: RGB uint8 (H, W, 3), int32 instance labels (H, W), bool vague mask or None."""

    image: np.ndarray
    labels: np.ndarray
    vague: np.ndarray | None


def load_tile(sample: Sample) -> LabelledTile:
    return LabelledTile(sample.load_image(), sample.load_labels(), sample.load_vague())


def mean_scores(items: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> dict[str, float]:
    """Per-image mean of every report metric over ``(labels, prediction, vague mask)`` triples, vague
    areas excluded: how a method's validation scores are recorded in ``metrics.json``."""
    accumulator = MetricAccumulator()
    for labels, prediction, vague in items:
        accumulator.update(labels, prediction, vague)
    mean = accumulator.compute().mean
    return {name: mean[name] for name in REPORT_METRICS}


@dataclass
class FitInfo:
    """What fitting one fold reports: entries for the fold's ``metrics.json``, and a working folder
    (resumable training state) that the runner removes once the fold is finished."""

    record: dict[str, Any] = field(default_factory=dict)
    scratch: Path | None = None


class Processes(Protocol):
    """The processes a method runs in (``nucleisam.train.distributed.DistContext`` under torchrun):
    every process fits, only the main one tunes, scores and writes."""

    @property
    def is_main(self) -> bool: ...

    def barrier(self) -> None: ...


class OneProcess:
    """A method that runs in this process alone."""

    is_main = True

    def barrier(self) -> None:
        """Nothing to wait for."""


class Method(Protocol):
    """A way of segmenting nuclei that the runner cross-validates.

    Per fold the runner calls ``fit``, then (main process only) ``tune``, ``segment_all`` on the test
    images in chunks of ``batch_size``, and ``save``; ``fit`` starts from nothing, so no fold learns
    from another. ``segment_all`` returns, per image, one label map (H, W int) per row of the report:
    ``primary`` (the method itself, drawn in the overlays and the per-fold and per-organ tables) and
    any comparison rows (the model's connected components and classical baseline).
    """

    #: The run's configuration (``config.yaml``); its ``data`` section says which data and folds.
    config: Any
    #: Validation metric the method selects and tunes on ("aji", "aji_plus", "pq" or "dice").
    select_metric: str
    primary: str
    batch_size: int
    #: Per-epoch table the method writes in each fold folder (plotted as ``curves.png``), if any.
    history_file: str | None
    processes: Processes

    def check(self) -> None:
        """Check the method's own inputs (weights files, devices) before the run writes anything."""
        ...

    def fit(self, split: FoldSplit, directory: Path, *, resume: bool, log: Log) -> FitInfo:
        """Learn from ``split.train`` (selecting on ``split.val``), writing into ``directory``."""
        ...

    def tune(self, val: Sequence[Sample], *, log: Log) -> dict[str, Any]:
        """Choose parameters on the validation images; returns entries for ``metrics.json``."""
        ...

    def segment_all(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Instance labels of each RGB uint8 image (H, W, 3), by report row."""
        ...

    def save(self, directory: Path) -> None:
        """Write the fold's artefacts (e.g. the fine-tuned adapter) into ``directory``."""
        ...
