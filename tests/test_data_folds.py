"""Cross-validation folds: equality with scikit-learn, organ grouping, validation split, manifests."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import KFold

from conftest import requires_shared_data
from nucleisam.data import FoldManifest, Sample, load_nuinsseg, make_folds
from nucleisam.errors import NucleisamError


def _samples(organ_sizes: dict[str, int]) -> list[Sample]:
    """Synthetic samples named like NuInsSeg tiles ("human_<organ>_<n>.png"), shuffled in input order."""
    samples = []
    for organ, size in organ_sizes.items():
        for n in range(1, size + 1):
            stem = f"human_{organ.replace(' ', '_')}_{n}"
            samples.append(Sample(stem=stem, organ=organ, species="human",
                                  image_path=Path(f"/data/human {organ}/tissue images/{stem}.png"),
                                  labels_path=Path(f"/data/human {organ}/label masks modify/{stem}.tif")))
    order = np.random.default_rng(0).permutation(len(samples))
    return [samples[i] for i in order]


def _assert_partition(manifest: FoldManifest) -> None:
    everything = set(manifest.stems)
    tested = Counter(stem for fold in manifest.folds for stem in fold.test)
    assert set(tested) == everything and set(tested.values()) == {1}
    for fold in manifest.folds:
        parts = [set(fold.train), set(fold.val), set(fold.test)]
        assert sum(len(p) for p in parts) == len(everything)
        assert set().union(*parts) == everything


@pytest.mark.parametrize(
    ("n", "k", "seed"), [(34, 5, 19), (665, 5, 19), (6, 5, 19), (23, 3, 0), (50, 7, 123)]
)
def test_kfold_equals_scikit_learn(n: int, k: int, seed: int) -> None:
    samples = _samples({"tissue": n})
    ordered = sorted(samples, key=lambda s: s.image_path.name)
    manifest = make_folds(samples, k=k, seed=seed, val_fraction=0.0)
    reference = KFold(n_splits=k, shuffle=True, random_state=seed).split(ordered)
    for fold, (train_idx, test_idx) in zip(manifest.folds, reference, strict=True):
        assert sorted(fold.test) == sorted(ordered[i].stem for i in test_idx)
        assert sorted(fold.train) == sorted(ordered[i].stem for i in train_idx)
        assert fold.val == []
    _assert_partition(manifest)


def test_bundled_sample_folds_match_scikit_learn(sample_root: Path) -> None:
    dataset = load_nuinsseg(sample_root)
    manifest = make_folds(dataset.samples)
    reference = list(KFold(n_splits=5, shuffle=True, random_state=19).split(dataset.samples))
    expected = [sorted(dataset.stems[i] for i in test) for _, test in reference]
    assert [sorted(f.test) for f in manifest.folds] == expected
    _assert_partition(manifest)


@requires_shared_data
def test_shared_spleen_folds(shared_nuinsseg: Path) -> None:
    dataset = load_nuinsseg(shared_nuinsseg)
    manifest = make_folds(dataset.samples)
    reference = KFold(n_splits=5, shuffle=True, random_state=19).split(dataset.samples)
    for fold, (_, test_idx) in zip(manifest.folds, reference, strict=True):
        assert set(fold.test) == {dataset.stems[i] for i in test_idx}
        # 27 or 28 training images; 12.5% of them, rounded half up: 3 (27 → 3.375) or 4 (28 → 3.5).
        assert len(fold.val) == (3 if len(fold.test) == 7 else 4)
    _assert_partition(manifest)


def test_validation_is_stratified_by_organ_and_seeded() -> None:
    samples = _samples({"liver": 40, "kidney": 24, "brain": 16})
    manifest = make_folds(samples, k=5, seed=19, val_fraction=0.125)
    by_stem = {s.stem: s for s in samples}
    for fold in manifest.folds:
        n_train = len(fold.train) + len(fold.val)
        assert len(fold.val) == int(0.125 * n_train + 0.5)
        val_organs = Counter(by_stem[s].organ for s in fold.val)
        pool = Counter(by_stem[s].organ for s in fold.train + fold.val)
        for organ, count in pool.items():
            # Largest-remainder allocation: within one image of the organ's proportional share.
            assert abs(val_organs[organ] - len(fold.val) * count / n_train) < 1.0
    again = make_folds(list(reversed(samples)), k=5, seed=19, val_fraction=0.125)
    assert again.folds == manifest.folds  # input order and repeated calls do not matter
    other = make_folds(samples, k=5, seed=19, val_fraction=0.125, val_seed=1)
    assert [f.test for f in other.folds] == [f.test for f in manifest.folds]
    assert [f.val for f in other.folds] != [f.val for f in manifest.folds]


def test_validation_takes_at_least_one_image_and_leaves_one_for_training() -> None:
    tiny = make_folds(_samples({"a": 3}), k=3, val_fraction=0.01)
    assert all(len(f.train) == 1 and len(f.val) == 1 for f in tiny.folds)
    single = make_folds(_samples({"a": 2}), k=2, val_fraction=0.5)
    assert all(len(f.train) == 1 and f.val == [] for f in single.folds)


def test_organ_grouped_folds_keep_each_organ_in_one_test_fold() -> None:
    sizes = {"liver": 30, "kidney": 25, "brain": 20, "spleen": 18, "lung": 12, "heart": 10, "skin": 6}
    samples = _samples(sizes)
    manifest = make_folds(samples, k=5, seed=19, group="organ")
    organ_of = {s.stem: s.organ for s in samples}
    folds_of_organ: dict[str, set[int]] = {}
    for fold in manifest.folds:
        for stem in fold.test:
            folds_of_organ.setdefault(organ_of[stem], set()).add(fold.index)
        assert fold.test  # every fold tests something
        assert not {organ_of[s] for s in fold.test} & {organ_of[s] for s in fold.train + fold.val}
    assert set(folds_of_organ) == set(sizes)
    assert all(len(folds) == 1 for folds in folds_of_organ.values())
    _assert_partition(manifest)
    # Greedy balancing: no fold's test set exceeds the largest organ plus the smallest fold.
    test_sizes = sorted(len(f.test) for f in manifest.folds)
    assert test_sizes[-1] <= max(sizes.values()) + test_sizes[0]


def test_organ_grouping_needs_enough_organs(sample_root: Path) -> None:
    with pytest.raises(NucleisamError, match=r"at least k=5 organs.*1 \(human spleen\)"):
        make_folds(load_nuinsseg(sample_root).samples, group="organ")
    with pytest.raises(NucleisamError, match="cannot make k=7 folds from 6"):
        make_folds(load_nuinsseg(sample_root).samples, k=7)
    with pytest.raises(NucleisamError, match=r"val_fraction=1\.0 is not valid"):
        make_folds(load_nuinsseg(sample_root).samples, val_fraction=1.0)


def test_manifest_round_trip_and_mismatch(sample_root: Path, tmp_path: Path) -> None:
    samples = load_nuinsseg(sample_root).samples
    manifest = make_folds(samples, k=3)
    path = manifest.save(tmp_path / "folds.json")
    data = json.loads(path.read_text())
    assert data["format"] == "nucleisam-folds" and data["version"] == 1
    assert (data["k"], data["seed"], data["group"], data["val_fraction"]) == (3, 19, None, 0.125)
    assert data["stems"] == [s.stem for s in samples] and len(data["fingerprint"]) == 64
    loaded = FoldManifest.load(path, samples=samples)
    assert loaded == manifest

    missing = r"folds\.json.*1 stem\(s\) in the manifest are missing.*human_spleen_28"
    with pytest.raises(NucleisamError, match=missing):
        FoldManifest.load(path, samples=samples[:-1])
    extra = Sample(stem="human_spleen_99", organ="spleen", species="human",
                   image_path=Path("x/human_spleen_99.png"), labels_path=Path("x/human_spleen_99.tif"))
    with pytest.raises(NucleisamError, match=r"not in the manifest: human_spleen_99"):
        FoldManifest.load(path, samples=[*samples, extra])


def test_tampered_or_foreign_manifests_are_refused(sample_root: Path, tmp_path: Path) -> None:
    samples = load_nuinsseg(sample_root).samples
    data = make_folds(samples, k=3).to_dict()
    moved = json.loads(json.dumps(data))
    moved["folds"][0]["test"].append(moved["folds"][0]["train"].pop())
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    with pytest.raises(NucleisamError, match=r"moved\.json.*test sets"):
        FoldManifest.load(tmp_path / "moved.json")
    renamed = json.loads(json.dumps(data))
    renamed["stems"][0] = "something_else"
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    with pytest.raises(NucleisamError, match=r"renamed\.json.*fingerprint"):
        FoldManifest.load(tmp_path / "renamed.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(NucleisamError, match=r"other\.json.*not a nucleisam fold manifest"):
        FoldManifest.load(tmp_path / "other.json")
    (tmp_path / "cut.json").write_text(json.dumps(data)[:50])
    with pytest.raises(NucleisamError, match=r"cannot read fold manifest .*cut\.json"):
        FoldManifest.load(tmp_path / "cut.json")
    with pytest.raises(NucleisamError, match="not found"):
        FoldManifest.load(tmp_path / "absent.json")
