"""``nucleisam train``, ``cv`` and ``demo``: the model (:mod:`nucleisam.experiments.model_method`) through
the cross-validation runner (:mod:`nucleisam.experiments.cv`)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucleisam.cli.options import (
    CONFIG,
    DATA_SOURCE,
    FOLDS,
    MODEL,
    add_option,
    add_options,
    config_values,
    name_flags,
)
from nucleisam.errors import NucleisamError

if TYPE_CHECKING:  # the training stack (torch) is imported when a training command runs, not before
    from nucleisam.config import Config

REPO_ROOT = Path(__file__).resolve().parents[3]
#: The bundled sample and the demo's configuration, present in a source checkout.
DEMO_DATA = REPO_ROOT / "examples" / "NuInsSeg"
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


def _add_run_options(parser: argparse.ArgumentParser, *, one_fold: bool = False) -> None:
    """The options every training command shares: data, folds, model, run and output; with
    ``one_fold`` also the choice of ``--fold I`` or ``--all``."""
    add_options(parser.add_argument_group("data"), (*DATA_SOURCE, "mpp"), from_config=True)
    folds = parser.add_argument_group("folds")
    add_options(folds, FOLDS, from_config=True)
    if one_fold:
        add_options(folds.add_mutually_exclusive_group(required=True), ("fold", "all"))
    add_options(parser.add_argument_group("model"), MODEL, from_config=True)
    add_options(parser.add_argument_group("run"), (*CONFIG, "device", "resume"), from_config=True)
    add_option(parser.add_argument_group("output"), "out", required=True,
               help="run folder: config.yaml, folds.json, fold_<i>/, summary.json, report.md")


def _config(args: argparse.Namespace) -> Config:
    from nucleisam.config import load_run_config

    return load_run_config(args.config, args.overrides, config_values(args))


def _reproduce(out: Path, verb: str) -> str:
    """The command that repeats this run exactly: its saved configuration, into a new folder."""
    config = shlex.quote(str(out / "config.yaml"))
    return f"nucleisam {verb} --config {config} --out {shlex.quote(str(out.parent / (out.name + '-again')))}"


def _run_cv(
    config: Config, out: Path, *, resume: bool, only_folds: list[int] | None, verb: str, notes: list[str] = ()
) -> dict[str, Any]:
    from nucleisam.experiments.cv import run_cv
    from nucleisam.experiments.model_method import ModelMethod
    from nucleisam.experiments.runs import summary_table
    from nucleisam.train.distributed import init_distributed, shutdown_distributed
    from nucleisam.train.loop import TrainingInterrupted

    context = init_distributed(config.train.device)
    try:
        summary = run_cv(
            ModelMethod(config, out, context=context),
            out,
            resume=resume,
            only_folds=only_folds,
            command=_reproduce(out, verb),
            notes=notes,
        )
    except TrainingInterrupted as exc:
        print(f"nucleisam: {name_flags(str(exc), {'resume'})}", file=sys.stderr)
        raise KeyboardInterrupt from exc
    finally:
        shutdown_distributed()
    if context.is_main and summary.get("methods"):
        print()
        print("Test scores, vague areas excluded (per-image mean per fold; mean ± std over folds):")
        print(summary_table(summary))
        print(f"\nreport: {out / 'report.md'}")
    return summary


def _handle_cv(args: argparse.Namespace) -> int:
    config = _config(args)
    _run_cv(config, Path(args.out), resume=args.resume, only_folds=None, verb="cv")
    return 0


def _handle_train(args: argparse.Namespace) -> int:
    config = _config(args)
    out = Path(args.out)
    if args.all:
        from nucleisam.experiments.cv import train_final
        from nucleisam.experiments.model_method import ADAPTER_FILE, ModelMethod
        from nucleisam.train.distributed import init_distributed, shutdown_distributed

        context = init_distributed(config.train.device)
        try:
            method = ModelMethod(config, out, context=context, comparisons=False)
            directory = train_final(method, out, resume=args.resume)
        finally:
            shutdown_distributed()
        if context.is_main:
            print(f"adapter: {directory / ADAPTER_FILE}")
        return 0
    _run_cv(config, out, resume=args.resume, only_folds=[args.fold], verb="train")
    return 0


def _handle_demo(args: argparse.Namespace) -> int:
    from nucleisam.config import load_run_config
    from nucleisam.model.checkpoint import default_checkpoint_path

    if not DEMO_DATA.is_dir() or not DEMO_CONFIG.is_file():
        raise NucleisamError(
            f"the demo needs the bundled sample {DEMO_DATA} and {DEMO_CONFIG}, found in a source checkout "
            "of nucleisam. Run it from a clone, or use `nucleisam cv --data ROOT --config FILE --out DIR`."
        )
    checkpoint = default_checkpoint_path()
    notes: list[str] = []
    values: dict[str, Any] = {"data.root": str(DEMO_DATA), **config_values(args)}
    if "model.weights" not in values and checkpoint.is_file():  # --checkpoint wins over the cached copy
        values["model.weights"] = str(checkpoint)
    elif "model.weights" not in values:
        values["model.weights"] = "none"
        warning = (
            f"MobileSAM weights not found at {checkpoint}: the demo trains from RANDOM initial weights, so "
            "its numbers say nothing about the quality of pretrained MobileSAM. Get the weights with "
            "`nucleisam weights download` (or put mobile_sam.pt there by hand) and run the demo again."
        )
        print(f"nucleisam: warning: {warning}", file=sys.stderr)
        notes.append(warning)
    config = load_run_config(DEMO_CONFIG, args.overrides, values)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    started = time.perf_counter()
    _run_cv(config, out, resume=args.resume, only_folds=None, verb="cv", notes=notes)
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    cv = subparsers.add_parser(
        "cv",
        help="k-fold cross-validation: train, select, tune and test a fresh model per fold",
        description="Cross-validate on a data set: per fold a fresh model trained on the fold's training "
        "images, the best epoch chosen on its validation images, post-processing tuned there, test images "
        "scored at native resolution. Writes config.yaml, folds.json, fold_<i>/, summary.json, report.md. "
        "Options override --config; --set overrides both.",
    )
    _add_run_options(cv)
    cv.set_defaults(handler=_handle_cv)

    train = subparsers.add_parser(
        "train",
        help="train one fold's model, or one model on all images",
        description="Train the model of one fold (--fold I, evaluated on its test images like `cv`), or one "
        "model on all images (--all; a validation split is held out for selection and tuning) for use with "
        "`nucleisam predict`.",
    )
    _add_run_options(train, one_fold=True)
    train.set_defaults(handler=_handle_train)

    demo = subparsers.add_parser(
        "demo",
        help="cross-validation on the bundled sample with a small CPU budget (what `make demo` runs)",
        description="Runs `cv` on the bundled six-tile sample with configs/demo.yaml (3 folds, the 512² "
        "tiles at input size 256, 30 short epochs). Uses the cached MobileSAM weights when present (or "
        "--checkpoint), otherwise random weights (warned). Options override configs/demo.yaml; --set "
        "overrides both.",
    )
    add_options(demo.add_argument_group("model"), MODEL, from_config=True)
    add_options(demo.add_argument_group("run"), ("overrides", "device", "resume"), from_config=True)
    add_option(demo.add_argument_group("output"), "out", default_text="runs/demo-<date>-<time>",
               help="run folder")
    demo.set_defaults(handler=_handle_demo)
