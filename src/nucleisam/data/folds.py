"""Cross-validation folds over samples, saved as a JSON manifest of stems and reused.

The default split reproduces the NuInsSeg authors' ``KFold(n_splits=5, shuffle=True,
random_state=19)`` over the images sorted by file name, without needing scikit-learn at run time:
the sample indices are permuted by ``np.random.RandomState(seed)`` and cut into ``k`` consecutive
test blocks, the first ``n % k`` blocks one longer. ``group="organ"`` instead keeps every organ's
images in one test fold (generalisation to unseen organs). Each training fold gives up a
validation subset stratified by organ, for checkpoint selection and post-processing tuning.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucleisam.data.datasets import Sample
from nucleisam.errors import NucleisamError
from nucleisam.utils.atomic import write_json_atomic

MANIFEST_FORMAT = "nucleisam-folds"
MANIFEST_VERSION = 1
GROUPINGS = (None, "organ")


@dataclass(frozen=True)
class Fold:
    """Stems of one fold's training, validation and test images (each sorted by name)."""

    index: int
    train: list[str]
    val: list[str]
    test: list[str]

    def select(self, samples: Sequence[Sample], part: str) -> list[Sample]:
        """The samples of ``part`` ("train", "val" or "test"), in the order of ``samples``."""
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be 'train', 'val' or 'test', not {part!r}")
        wanted = set(getattr(self, part))
        return [sample for sample in samples if sample.stem in wanted]


def kfold_test_indices(n_samples: int, *, k: int, seed: int) -> list[np.ndarray]:
    """Test indices of each fold, exactly as scikit-learn's ``KFold(k, shuffle=True, random_state=seed)``.

    Returns ``k`` arrays in the permuted order scikit-learn yields them.
    """
    order = np.random.RandomState(seed).permutation(n_samples)
    sizes = np.full(k, n_samples // k, dtype=np.int64)
    sizes[: n_samples % k] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [order[bounds[i] : bounds[i + 1]] for i in range(k)]


def group_test_indices(groups: Sequence[str], *, k: int, seed: int) -> list[np.ndarray]:
    """Test indices per fold with every group in exactly one fold, folds balanced in image count.

    Groups are shuffled with ``RandomState(seed)`` (so equal-sized groups land in seeded folds),
    then placed largest first into the fold that currently has the fewest images.
    """
    names = sorted(set(groups))
    if len(names) < k:
        raise NucleisamError(
            f"grouping by organ needs at least k={k} organs to fill {k} folds, but the data has "
            f"{len(names)} ({', '.join(names)}). Use fewer folds (k) or no grouping (group)."
        )
    members: dict[str, list[int]] = defaultdict(list)
    for index, name in enumerate(groups):
        members[name].append(index)
    shuffled = [names[i] for i in np.random.RandomState(seed).permutation(len(names))]
    placement_order = sorted(shuffled, key=lambda name: -len(members[name]))  # stable: keeps the shuffle
    fold_sizes = [0] * k
    fold_members: list[list[int]] = [[] for _ in range(k)]
    for name in placement_order:
        target = int(np.argmin(fold_sizes))
        fold_members[target].extend(members[name])
        fold_sizes[target] += len(members[name])
    return [np.asarray(sorted(indices), dtype=np.int64) for indices in fold_members]


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def stratified_validation(
    train_indices: Sequence[int], groups: Sequence[str], *, fraction: float, rng: np.random.Generator
) -> list[int]:
    """Pick ``fraction`` of ``train_indices`` (at least one when there are two or more) for validation.

    The count per group is proportional to the group's share of the training images (largest-
    remainder rounding), so every organ is represented as far as the numbers allow; at least one
    training image always remains.
    """
    n_train = len(train_indices)
    if fraction <= 0 or n_train < 2:
        return []
    n_val = min(max(1, _round_half_up(fraction * n_train)), n_train - 1)
    by_group: dict[str, list[int]] = defaultdict(list)
    for index in train_indices:
        by_group[groups[index]].append(int(index))
    names = sorted(by_group)
    quotas = [n_val * len(by_group[name]) / n_train for name in names]
    counts = [math.floor(q) for q in quotas]
    leftover = n_val - sum(counts)
    # Largest fractional parts first; ties go to the larger group, then to the name order.
    ranked = sorted(range(len(names)), key=lambda i: (-(quotas[i] - counts[i]), -len(by_group[names[i]]), i))
    for i in ranked[:leftover]:
        counts[i] += 1
    chosen: list[int] = []
    for name, count in zip(names, counts, strict=True):
        if count:
            picked = rng.choice(len(by_group[name]), size=count, replace=False)
            chosen.extend(by_group[name][int(j)] for j in picked)
    return sorted(chosen)


def _fingerprint(stems: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(stems)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FoldManifest:
    """A reproducible set of folds: parameters, the stems they cover and each fold's stems."""

    k: int
    seed: int
    group: str | None
    val_fraction: float
    val_seed: int
    stems: list[str]
    folds: list[Fold]
    version: int = MANIFEST_VERSION

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the sorted stems: identifies the data the folds were made for."""
        return _fingerprint(self.stems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "k": self.k,
            "seed": self.seed,
            "group": self.group,
            "val_fraction": self.val_fraction,
            "val_seed": self.val_seed,
            "n_samples": len(self.stems),
            "fingerprint": self.fingerprint,
            "stems": list(self.stems),
            "folds": [
                {"index": f.index, "train": f.train, "val": f.val, "test": f.test} for f in self.folds
            ],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest as JSON, atomically."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "fold manifest") -> FoldManifest:
        """Build and validate a manifest from its JSON form."""
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise NucleisamError(f"{source} is not a nucleisam fold manifest (no \"format\": "
                                 f"\"{MANIFEST_FORMAT}\"). Create one with `nucleisam data folds`.")
        if data.get("version") != MANIFEST_VERSION:
            raise NucleisamError(f"{source} has manifest version {data.get('version')!r}; this nucleisam "
                                 f"reads version {MANIFEST_VERSION}. Re-create it with "
                                 "`nucleisam data folds`.")
        try:
            manifest = cls(
                k=int(data["k"]),
                seed=int(data["seed"]),
                group=data["group"],
                val_fraction=float(data["val_fraction"]),
                val_seed=int(data["val_seed"]),
                stems=[str(s) for s in data["stems"]],
                folds=[
                    Fold(index=int(f["index"]), train=[str(s) for s in f["train"]],
                         val=[str(s) for s in f["val"]], test=[str(s) for s in f["test"]])
                    for f in data["folds"]
                ],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NucleisamError(f"{source} is incomplete or malformed ({exc!r}). Re-create it with "
                                 "`nucleisam data folds`.") from exc
        if manifest.group not in GROUPINGS:
            raise NucleisamError(f"{source} has an unknown grouping {manifest.group!r}.")
        if data.get("fingerprint") not in (None, manifest.fingerprint):
            raise NucleisamError(f"{source}: its fingerprint does not match its own stem list; the file "
                                 "was edited by hand. Re-create it with `nucleisam data folds`.")
        manifest.check_consistency(source=source)
        return manifest

    def check_consistency(self, *, source: str = "fold manifest") -> None:
        """Each fold partitions the stems; the test sets of all folds partition them too."""
        everything = set(self.stems)
        if len(everything) != len(self.stems):
            raise NucleisamError(f"{source} lists a stem twice.")
        if len(self.folds) != self.k:
            raise NucleisamError(f"{source} declares k={self.k} but holds {len(self.folds)} folds.")
        tested: list[str] = []
        for fold in self.folds:
            parts = fold.train + fold.val + fold.test
            if len(parts) != len(set(parts)) or set(parts) != everything:
                raise NucleisamError(f"{source}: fold {fold.index} does not split the stems into disjoint "
                                     "train/val/test sets covering all of them.")
            tested.extend(fold.test)
        if sorted(tested) != sorted(everything):
            raise NucleisamError(f"{source}: the test sets of the folds do not cover every stem "
                                 "exactly once.")

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, samples: Sequence[Sample] | None = None
    ) -> FoldManifest:
        """Read a manifest; with ``samples``, insist that it covers exactly those stems."""
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise NucleisamError(f"fold manifest not found: {file}. Create it with `nucleisam data folds`."
                                 ) from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise NucleisamError(f"cannot read fold manifest {file}: {exc}.") from exc
        manifest = cls.from_dict(data, source=f"fold manifest {file}")
        if samples is not None:
            manifest.check_matches(samples, source=f"fold manifest {file}")
        return manifest

    def check_matches(self, samples: Sequence[Sample], *, source: str = "fold manifest") -> None:
        """Raise :class:`NucleisamError` naming missing/extra stems when the data changed."""
        current = {sample.stem for sample in samples}
        recorded = set(self.stems)
        if current == recorded:
            return
        missing = sorted(recorded - current)
        extra = sorted(current - recorded)

        def listing(stems: list[str]) -> str:
            shown = ", ".join(stems[:10])
            return shown + (f" and {len(stems) - 10} more" if len(stems) > 10 else "")

        details = []
        if missing:
            details.append(f"{len(missing)} stem(s) in the manifest are missing from the data: "
                           f"{listing(missing)}")
        if extra:
            details.append(f"{len(extra)} stem(s) in the data are not in the manifest: {listing(extra)}")
        raise NucleisamError(
            f"{source} no longer matches the data ({'; '.join(details)}). Re-create it with "
            "`nucleisam data folds`, or point it at the data it was made for."
        )


def make_folds(
    samples: Sequence[Sample],
    *,
    k: int = 5,
    seed: int = 19,
    group: str | None = None,
    val_fraction: float = 0.125,
    val_seed: int = 0,
) -> FoldManifest:
    """Split samples into ``k`` folds (see the module docstring) with a validation subset per fold.

    Args:
        samples: the data set's samples; they are sorted by image file name first.
        k: number of folds (≥ 2 and ≤ the number of samples, or of organs with ``group="organ"``).
        seed: seed of the test split (19 reproduces the NuInsSeg authors' split).
        group: ``None`` for the image-level split, ``"organ"`` to keep each organ in one test fold.
        val_fraction: share of each training fold held out for validation, stratified by organ.
        val_seed: seed of the validation draw (fold ``i`` uses ``default_rng([val_seed, i])``).
    """
    if group not in GROUPINGS:
        raise NucleisamError(f"unknown grouping {group!r} (group); choose 'organ' or leave it out.")
    if not 0.0 <= val_fraction < 1.0:
        raise NucleisamError(f"val_fraction={val_fraction} is not valid: it must be in [0, 1).")
    ordered = sorted(samples, key=lambda s: (s.image_path.name, str(s.image_path)))
    stems = [s.stem for s in ordered]
    if len(set(stems)) != len(stems):
        raise NucleisamError("the samples contain duplicate stems; fix the data set before making folds.")
    if k < 2:
        raise NucleisamError(f"k={k} is too few folds: at least 2 are needed.")
    if k > len(ordered):
        raise NucleisamError(f"cannot make k={k} folds from {len(ordered)} images; use k={len(ordered)} "
                             "or fewer.")
    groups = [s.group for s in ordered]
    if group == "organ":
        tests = group_test_indices(groups, k=k, seed=seed)
    else:
        tests = kfold_test_indices(len(ordered), k=k, seed=seed)
    folds = []
    for index, test in enumerate(tests):
        test_set = {int(i) for i in test}
        train = [i for i in range(len(ordered)) if i not in test_set]
        rng = np.random.default_rng([val_seed, index])
        val = set(stratified_validation(train, groups, fraction=val_fraction, rng=rng))
        folds.append(Fold(
            index=index,
            train=[stems[i] for i in train if i not in val],
            val=[stems[i] for i in sorted(val)],
            test=[stems[i] for i in sorted(test_set)],
        ))
    return FoldManifest(k=k, seed=seed, group=group, val_fraction=val_fraction, val_seed=val_seed,
                        stems=stems, folds=folds)
