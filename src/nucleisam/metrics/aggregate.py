"""Aggregating per-image metrics over a dataset, with every convention stated.

The field reports the **per-image mean** (each tile counts once); we also give the **pooled**
value (sums of intersections/unions for AJI and AJI+, of TP/FP/FN and IoUs for PQ, of pixels for
Dice, of TP per threshold for mSA, over all images, then one ratio), the **nuclei-weighted mean**
(NucEval's normalisation: weights = GT nuclei per image after the vague rule) and the
sample standard deviation of the per-image values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import reduce
from operator import add
from typing import Any

import numpy as np

from nucleisam.errors import NucleisamError
from nucleisam.metrics.instance import METRIC_NAMES, InstanceCounts, image_counts


@dataclass(frozen=True)
class MetricSummary:
    """What :meth:`MetricAccumulator.compute` returns.

    ``per_image`` holds one dict per image (``key``, the metrics, ``n_gt``, ``n_pred``, ``tp``,
    ``fp``, ``fn``) in update order. ``mean``, ``std`` (sample, ddof=1; 0.0 for one image),
    ``pooled`` and ``weighted_mean`` map each metric name to a float. With no GT nuclei in any
    image the weighted mean falls back to equal weights.
    """

    per_image: list[dict[str, Any]]
    mean: dict[str, float]
    std: dict[str, float]
    pooled: dict[str, float]
    weighted_mean: dict[str, float]
    n_images: int
    n_gt: int
    n_pred: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (aggregates first, then the per-image table)."""
        return {
            "n_images": self.n_images,
            "n_gt": self.n_gt,
            "n_pred": self.n_pred,
            "mean": self.mean,
            "std": self.std,
            "pooled": self.pooled,
            "weighted_mean": self.weighted_mean,
            "per_image": self.per_image,
        }


@dataclass
class MetricAccumulator:
    """Collects per-image counts with ``update`` and aggregates them with ``compute``.

    >>> acc = MetricAccumulator()
    >>> for key, gt, pred, vague in images:            # doctest: +SKIP
    ...     acc.update(gt, pred, vague, key=key)
    >>> summary = acc.compute()                         # doctest: +SKIP
    >>> summary.mean["aji"], summary.pooled["aji"]      # doctest: +SKIP
    """

    vague_threshold: float = 0.25
    zone_width: int = 0
    _keys: list[str] = field(default_factory=list, init=False, repr=False)
    _counts: list[InstanceCounts] = field(default_factory=list, init=False, repr=False)

    def update(
        self,
        gt: np.ndarray,
        pred: np.ndarray,
        vague: np.ndarray | None = None,
        *,
        key: str | None = None,
    ) -> dict[str, float | int]:
        """Score one image, remember it under ``key`` (default: its position), return its metrics."""
        key = str(len(self._keys)) if key is None else str(key)
        if key in self._keys:
            raise NucleisamError(f"image key {key!r} was already scored; keys must be unique.")
        counts = image_counts(
            gt, pred, vague, vague_threshold=self.vague_threshold, zone_width=self.zone_width
        )
        self._keys.append(key)
        self._counts.append(counts)
        return counts.row()

    def reset(self) -> None:
        """Forget every image scored so far."""
        self._keys.clear()
        self._counts.clear()

    def __len__(self) -> int:
        return len(self._counts)

    def compute(self) -> MetricSummary:
        """Per-image table, per-image mean and std, pooled value and nuclei-weighted mean."""
        if not self._counts:
            raise NucleisamError("no images were scored; nothing to aggregate.")
        rows = [{"key": key, **counts.row()} for key, counts in zip(self._keys, self._counts, strict=True)]
        values = {name: np.array([row[name] for row in rows], float) for name in METRIC_NAMES}
        weights = np.array([counts.n_gt for counts in self._counts], float)
        if weights.sum() == 0:
            weights = np.ones_like(weights)
        total = reduce(add, self._counts)
        return MetricSummary(
            per_image=rows,
            mean={name: math.fsum(v) / v.size for name, v in values.items()},
            std={name: float(np.std(v, ddof=1)) if v.size > 1 else 0.0 for name, v in values.items()},
            pooled=total.metrics(),
            weighted_mean={name: float(np.sum(v * weights) / weights.sum()) for name, v in values.items()},
            n_images=len(rows),
            n_gt=total.n_gt,
            n_pred=total.n_pred,
        )
