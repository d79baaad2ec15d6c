"""``nucleisam train``, ``cv`` and ``demo``: thin wrappers over :mod:`nucleisam.experiments.cv`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucleisam.data.download import resolve_data_root
from nucleisam.errors import NucleisamError

if TYPE_CHECKING:  # the training stack (torch) is imported when a training command runs, not before
    from nucleisam.train.config import Config

REPO_ROOT = Path(__file__).resolve().parents[3]
#: The bundled sample and the demo's configuration, present in a source checkout.
DEMO_DATA = REPO_ROOT / "examples" / "NuInsSeg"
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one option, e.g. --set train.epochs=10 (repeatable; applied last)",
    )


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML/TOML configuration (see configs/)")
    _add_set_option(parser)
    parser.add_argument("--checkpoint", metavar="PATH", help="MobileSAM checkpoint (model.weights)")
    parser.add_argument("--device", help="train.device: auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out (finished folds are kept)"
    )


def _add_data_options(parser: argparse.ArgumentParser, *, required_out: bool = True) -> None:
    parser.add_argument(
        "--data", metavar="ROOT", help="NuInsSeg-layout folder (data.root); 'nuinsseg': the downloaded copy"
    )
    parser.add_argument("--images", metavar="DIR", help="folder of images (with --masks), instead of --data")
    parser.add_argument("--masks", metavar="DIR", help="folder of instance label maps paired by stem")
    parser.add_argument("--out", metavar="DIR", required=required_out, help="run folder")


def _values(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """Dotted config keys set by dedicated options (only those given)."""
    values: dict[str, Any] = {}
    for option, key in (
        ("data", "data.root"),
        ("images", "data.images"),
        ("masks", "data.masks"),
        ("checkpoint", "model.weights"),
        ("device", "train.device"),
    ):
        value = getattr(args, option, None)
        if option == "data" and value is not None:
            value = resolve_data_root(value)
        if value is not None:
            values[key] = (
                str(Path(value).resolve()) if option in ("data", "images", "masks", "checkpoint") else value
            )
    values.update({k: v for k, v in extra.items() if v is not None})
    return values


def _config(args: argparse.Namespace, **extra: Any) -> Config:
    from nucleisam.train.config import load_run_config

    return load_run_config(args.config, args.overrides, _values(args, **extra))


def _reproduce(out: Path, verb: str) -> str:
    """The command that repeats this run exactly: its saved configuration, into a new folder."""
    config = shlex.quote(str(out / "config.yaml"))
    return f"nucleisam {verb} --config {config} --out {shlex.quote(str(out.parent / (out.name + '-again')))}"


def _run_cv(
    config: Config, out: Path, *, resume: bool, only_folds: list[int] | None, verb: str, notes: list[str] = ()
) -> dict[str, Any]:
    from nucleisam.experiments.cv import run_cv
    from nucleisam.experiments.runs import summary_table
    from nucleisam.train.distributed import init_distributed, shutdown_distributed
    from nucleisam.train.loop import TrainingInterrupted

    context = init_distributed(config.train.device)
    try:
        summary = run_cv(
            config,
            out,
            resume=resume,
            only_folds=only_folds,
            command=_reproduce(out, verb),
            notes=notes,
            context=context,
        )
    except TrainingInterrupted as exc:
        print(f"nucleisam: {exc}", file=sys.stderr)
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
    config = _config(args, **{"data.k": args.k, "data.seed": args.seed, "data.group": args.group})
    _run_cv(config, Path(args.out), resume=args.resume, only_folds=None, verb="cv")
    return 0


def _handle_train(args: argparse.Namespace) -> int:
    config = _config(args)
    out = Path(args.out)
    if args.all:
        from nucleisam.experiments.cv import train_final
        from nucleisam.train.distributed import init_distributed, shutdown_distributed

        context = init_distributed(config.train.device)
        try:
            adapter = train_final(config, out, resume=args.resume, context=context)
        finally:
            shutdown_distributed()
        if context.is_main:
            print(f"adapter: {adapter}")
        return 0
    _run_cv(config, out, resume=args.resume, only_folds=[args.fold], verb="train")
    return 0


def _handle_demo(args: argparse.Namespace) -> int:
    from nucleisam.model.checkpoint import default_checkpoint_path
    from nucleisam.train.config import load_run_config

    if not DEMO_DATA.is_dir() or not DEMO_CONFIG.is_file():
        raise NucleisamError(
            f"the demo needs the bundled sample {DEMO_DATA} and {DEMO_CONFIG}, found in a source checkout "
            "of nucleisam. Run it from a clone, or use `nucleisam cv --data ROOT --config FILE --out DIR`."
        )
    checkpoint = default_checkpoint_path()
    notes: list[str] = []
    values: dict[str, Any] = {"data.root": str(DEMO_DATA)}
    if checkpoint.is_file():
        values["model.weights"] = str(checkpoint)
    else:
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
        "scored at native resolution. Writes config.yaml, folds.json, fold_<i>/, summary.json, report.md.",
    )
    _add_data_options(cv)
    cv.add_argument("--k", type=int, help="number of folds (data.k, default 5)")
    cv.add_argument("--seed", type=int, help="fold seed (data.seed, default 19: the NuInsSeg authors' split)")
    cv.add_argument("--group", choices=("organ",), help="keep each organ in one test fold (data.group)")
    _add_config_options(cv)
    cv.set_defaults(handler=_handle_cv)

    train = subparsers.add_parser(
        "train",
        help="train one fold's model, or one model on all images",
        description="Train the model of one fold (--fold K, evaluated on its test images like `cv`), or one "
        "model on all images (--all; a validation split is held out for selection and tuning) for use with "
        "`nucleisam predict`.",
    )
    _add_data_options(train)
    which = train.add_mutually_exclusive_group(required=True)
    which.add_argument("--fold", type=int, metavar="K", help="fold index (0-based)")
    which.add_argument("--all", action="store_true", help="train on all images (final model)")
    _add_config_options(train)
    train.set_defaults(handler=_handle_train)

    demo = subparsers.add_parser(
        "demo",
        help="cross-validation on the bundled sample with a small CPU budget (what `make demo` runs)",
        description="Runs `cv` on the bundled six-tile sample with configs/demo.yaml (3 folds, the 512² "
        "tiles at input size 256, 30 short epochs). Uses the cached MobileSAM weights when present, "
        "otherwise random weights (warned).",
    )
    demo.add_argument("--out", metavar="DIR", help="run folder (default runs/demo-<date>-<time>)")
    _add_set_option(demo)
    demo.add_argument("--resume", action="store_true", help="continue the demo run in --out")
    demo.set_defaults(handler=_handle_demo)
