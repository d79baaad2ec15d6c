"""Choosing post-processing parameters on a validation set by mean AJI (or another metric).

The search is generic: any frozen dataclass of parameters and any ``segment(input, config) ->
labels`` function can be tuned, so the instance head's watershed (:func:`instances_from_maps`) and the
classical baseline (:func:`nucleisam.classical.classical_instances`) use the same code. The starting
configuration is always scored first and only a strictly better one replaces it, so tuning never
lowers the validation score.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nucleisam.config import PostprocessConfig
from nucleisam.errors import NucleisamError
from nucleisam.metrics import METRIC_NAMES, image_counts
from nucleisam.postprocess.watershed import instances_from_maps

#: Search space for the instance head's maps (foreground + centre + boundary distance).
MAPS_SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "foreground_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "center_threshold": (0.15, 0.2, 0.3, 0.4, 0.5),
    "boundary_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "split_depth": (0.0, 0.15, 0.3, 0.5),
    "min_area": (0, 10, 20, 40),
}
#: Search space for a foreground probability alone (distance-transform peaks).
FOREGROUND_SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "foreground_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "peak_height": (0.5, 1.0, 1.5, 2.0, 3.0),
    "min_area": (0, 10, 20, 40),
}

#: One validation item: (model maps or image, GT instance labels, vague mask or None).
Item = tuple[Any, np.ndarray, "np.ndarray | None"]


@dataclass(frozen=True)
class TuningResult:
    """The chosen parameters and everything that was tried."""

    config: Any  #: the best configuration (same dataclass type as the starting one)
    score: float  #: its mean ``metric`` over the validation items
    start_score: float  #: the starting configuration's mean ``metric``
    metric: str
    #: One row per distinct configuration scored, in order: every parameter plus ``score``.
    table: list[dict[str, Any]]


def tune_postprocess(
    items: Sequence[Item],
    *,
    search_space: Mapping[str, Sequence[Any]] | None = None,
    config: Any = None,
    segment: Callable[[Any, Any], np.ndarray] = instances_from_maps,
    strategy: Literal["coordinate", "grid"] = "coordinate",
    metric: str = "aji",
    max_rounds: int = 3,
    vague_threshold: float = 0.25,
) -> TuningResult:
    """Search parameters that maximise the per-image mean of ``metric`` over ``items``.

    Parameters
    ----------
    items
        Validation images as ``(input, gt_labels, vague_or_None)``; ``input`` is what
        ``segment`` takes (a dict of maps for :func:`instances_from_maps`, an RGB image for the
        classical baseline).
    search_space
        Values to try per parameter (field names of ``config``). Default for
        :func:`instances_from_maps`: :data:`MAPS_SEARCH_SPACE` when the maps include a distance map,
        else :data:`FOREGROUND_SEARCH_SPACE`.
    config
        Starting configuration (a frozen dataclass); default :class:`PostprocessConfig`.
    strategy
        ``"coordinate"``: one parameter at a time, best value kept, repeated until a round brings
        no gain (at most ``max_rounds``); ``"grid"``: every combination.
    metric
        Any per-image metric of :func:`nucleisam.metrics.evaluate_instances` (``aji`` default).
    """
    if not items:
        raise NucleisamError("tune_postprocess needs at least one validation item.")
    if metric not in METRIC_NAMES:
        raise NucleisamError(f"unknown metric {metric!r}; choose one of {', '.join(METRIC_NAMES)}.")
    if strategy not in ("coordinate", "grid"):
        raise NucleisamError(f"unknown search strategy {strategy!r}; use 'coordinate' or 'grid'.")
    if config is None:
        config = PostprocessConfig()
    if search_space is None:
        if segment is not instances_from_maps:
            raise NucleisamError("tune_postprocess: give a search_space for a custom segment function.")
        maps = items[0][0]
        has_distance = "center_distance" in maps or "boundary_distance" in maps
        search_space = MAPS_SEARCH_SPACE if has_distance else FOREGROUND_SEARCH_SPACE
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(search_space) - names)
    if unknown:
        raise NucleisamError(
            f"cannot tune {', '.join(unknown)}: not a parameter of {type(config).__name__} "
            f"({', '.join(sorted(names))})."
        )

    scores: dict[Any, float] = {}
    table: list[dict[str, Any]] = []

    def score(candidate: Any) -> float:
        if candidate not in scores:
            values = []
            for source, gt, vague in items:
                counts = image_counts(
                    gt, segment(source, candidate), vague, vague_threshold=vague_threshold
                )
                values.append(counts.metrics()[metric])
            scores[candidate] = math.fsum(values) / len(values)
            table.append({**dataclasses.asdict(candidate), "score": scores[candidate]})
        return scores[candidate]

    best, best_score = config, score(config)
    start_score = best_score
    if strategy == "grid":
        keys = list(search_space)
        for combination in itertools.product(*(search_space[key] for key in keys)):
            candidate = dataclasses.replace(config, **dict(zip(keys, combination, strict=True)))
            if score(candidate) > best_score:
                best, best_score = candidate, scores[candidate]
    else:
        for _ in range(max_rounds):
            improved = False
            for key, values in search_space.items():
                for value in values:
                    candidate = dataclasses.replace(best, **{key: value})
                    if score(candidate) > best_score:
                        best, best_score, improved = candidate, scores[candidate], True
            if not improved:
                break
    return TuningResult(config=best, score=best_score, start_score=start_score, metric=metric, table=table)
