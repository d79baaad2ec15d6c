"""``nucleisam baseline``: the classical baseline (no model,
:mod:`nucleisam.experiments.classical_method`) through the runner of ``cv``
(:mod:`nucleisam.experiments.cv`)."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from nucleisam.cli.options import DATA_SOURCE, FOLDS, OPTIONS, add_option, add_options, config_values
from nucleisam.errors import NucleisamError


def _reproduce(out: Path) -> str:
    """The command that repeats this run: its saved configuration and folds, into a new folder."""
    config, folds = shlex.quote(str(out / "config.yaml")), shlex.quote(str(out / "folds.json"))
    again = shlex.quote(str(out.parent / (out.name + "-again")))
    return f"nucleisam baseline --config {config} --folds {folds} --out {again}"


def _values(args: argparse.Namespace) -> dict[str, Any]:
    """Configuration keys set by the options given; a fold manifest (--folds) replaces the fold options."""
    values = config_values(args)
    given = [OPTIONS[name].flag for name in FOLDS if getattr(args, name) is not None]
    if args.folds is not None and given:
        raise NucleisamError(
            f"--folds FILE fixes the folds; leave out {', '.join(given)} (they are read from the manifest)."
        )
    return values


def _handle_baseline(args: argparse.Namespace) -> int:
    from nucleisam.config import load_baseline_config
    from nucleisam.experiments.classical_method import ClassicalMethod
    from nucleisam.experiments.cv import run_cv
    from nucleisam.experiments.runs import summary_table

    config = load_baseline_config(args.config, args.overrides, _values(args))
    out = Path(args.out)
    started = time.perf_counter()
    summary = run_cv(
        ClassicalMethod(config), out, folds=args.folds, resume=args.resume, command=_reproduce(out)
    )
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
    add_options(parser.add_argument_group("data"), (*DATA_SOURCE, "mpp"), from_config=True)
    add_options(parser.add_argument_group("folds"), (*FOLDS, "folds"), from_config=True)
    run = parser.add_argument_group("run")
    add_option(run, "config", help="a baseline run's config.yaml (data, starting parameters in classical:, "
               "select_metric)")
    add_options(run, ("overrides", "resume"))
    add_option(parser.add_argument_group("output"), "out", required=True,
               help="run folder: config.yaml, folds.json, fold_<i>/, summary.json, report.md")
    parser.set_defaults(handler=_handle_baseline)
