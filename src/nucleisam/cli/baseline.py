"""``nucleisam baseline``: the classical baseline (no model) over the folds of ``cv``
(:mod:`nucleisam.experiments.classical_cv`)."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from nucleisam.data.download import resolve_data_root
from nucleisam.errors import NucleisamError

#: CLI options that define the folds → configuration keys.
FOLD_OPTIONS = {
    "k": "data.k",
    "seed": "data.seed",
    "group": "data.group",
    "val_fraction": "data.val_fraction",
}


def _reproduce(out: Path) -> str:
    """The command that repeats this run: its saved configuration and folds, into a new folder."""
    config, folds = shlex.quote(str(out / "config.yaml")), shlex.quote(str(out / "folds.json"))
    again = shlex.quote(str(out.parent / (out.name + "-again")))
    return f"nucleisam baseline --config {config} --folds {folds} --out {again}"


def _values(args: argparse.Namespace) -> dict[str, Any]:
    """Configuration keys set by the options given (paths made absolute, as config.yaml records them)."""
    if args.k is not None and args.k < 2:
        raise NucleisamError(f"--k must be at least 2 (folds), got {args.k}.")
    if args.val_fraction is not None and not 0.0 < args.val_fraction < 1.0:
        raise NucleisamError(
            f"--val-fraction must be between 0 and 1 (exclusive), got {args.val_fraction}: each fold needs "
            "validation images to tune the baseline on and training images left over."
        )
    fold_values = {key: getattr(args, option) for option, key in FOLD_OPTIONS.items()}
    fold_values = {key: value for key, value in fold_values.items() if value is not None}
    if args.folds is not None and fold_values:
        raise NucleisamError(
            "--folds FILE fixes the folds; leave out --k, --seed, --group and --val-fraction (they are read "
            "from the manifest)."
        )
    values: dict[str, Any] = dict(fold_values)
    for option, key in (("data", "data.root"), ("images", "data.images"), ("masks", "data.masks")):
        value = getattr(args, option)
        if option == "data" and value is not None:
            value = resolve_data_root(value)
        if value is not None:
            values[key] = str(Path(value).resolve())
    return values


def _handle_baseline(args: argparse.Namespace) -> int:
    from nucleisam.experiments.classical_cv import load_baseline_config, run_baseline
    from nucleisam.experiments.runs import summary_table

    config = load_baseline_config(args.config, (), _values(args))
    out = Path(args.out)
    started = time.perf_counter()
    summary = run_baseline(config, out, folds=args.folds, resume=args.resume, command=_reproduce(out))
    print()
    print("Test scores, vague areas excluded (per-image mean per fold; mean ± std over folds):")
    print(summary_table(summary))
    print(f"\nreport: {out / 'report.md'}")
    print(f"baseline finished in {time.perf_counter() - started:.1f} s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "baseline",
        help="the classical baseline (hematoxylin threshold + watershed, no model) on the folds of `cv`",
        description="Cross-validate the classical baseline without any model: per fold its parameters tuned "
        "on the fold's validation images (the search `cv` uses for its classical row), test images scored "
        "with and without vague areas. Writes the folder layout of `cv`: config.yaml, folds.json, "
        "fold_<i>/per_image.csv and metrics.json, summary.json, report.md, overlays/.",
    )
    parser.add_argument(
        "--data", metavar="ROOT", help="NuInsSeg-layout folder (data.root); 'nuinsseg': the downloaded copy"
    )
    parser.add_argument("--images", metavar="DIR", help="folder of images (with --masks), instead of --data")
    parser.add_argument("--masks", metavar="DIR", help="folder of instance label maps paired by stem")
    parser.add_argument("--out", metavar="DIR", required=True, help="run folder")
    parser.add_argument("--k", type=int, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, help="fold seed (default 19: the NuInsSeg authors' split)")
    parser.add_argument("--group", choices=("organ",), help="keep each organ in one test fold")
    parser.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="share of each training fold held out to tune on (default 0.125)",
    )
    parser.add_argument(
        "--folds", metavar="FILE", help="use this fold manifest (e.g. a cv run's folds.json) instead"
    )
    parser.add_argument(
        "--config", metavar="FILE", help="a baseline run's config.yaml (data, starting parameters, metric)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out (finished folds are kept)"
    )
    parser.set_defaults(handler=_handle_baseline)
