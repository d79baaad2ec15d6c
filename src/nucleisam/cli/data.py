"""`nucleisam data info|folds|download|path`: inspect data sets, make cross-validation folds, get NuInsSeg."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from nucleisam.cli.options import DATA_SOURCE, FOLDS, add_deprecated_root, add_option, add_options
from nucleisam.config import DataConfig
from nucleisam.data.datasets import Dataset, open_dataset
from nucleisam.data.download import (
    DATASETS,
    default_data_dir,
    download_dataset,
    get_dataset,
    install_from_archive,
    resolve_data_root,
)
from nucleisam.data.folds import make_folds
from nucleisam.data.summary import SUBSTANTIAL_VAGUE_FRACTION, DatasetSummary, summarize
from nucleisam.errors import NucleisamError
from nucleisam.utils.atomic import ensure_output_dir


def _add_data_source(parser: argparse.ArgumentParser, *extra: str) -> None:
    add_deprecated_root(parser)
    add_options(parser.add_argument_group("data"), (*DATA_SOURCE, *extra))


def _open(args: argparse.Namespace) -> Dataset:
    if args.root is not None and args.data is not None:
        raise NucleisamError("give the data root once, as --data ROOT.")
    root = args.data if args.root is None else args.root
    return open_dataset(None if root is None else resolve_data_root(root), images=args.images,
                        masks=args.masks, binary_masks=args.binary_masks, strict=args.strict)


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect data sets and make cross-validation folds",
                                 description="Inspect data sets and make cross-validation folds.")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    info = commands.add_parser("info", help="count images, nuclei, organs, vague areas and problems",
                               description="Count images, nuclei, organs, tiles with vague areas, and "
                               "list problems (unpaired files, duplicates, size mismatches); say which "
                               "resolution the images record and which a run on them would use.")
    _add_data_source(info, "mpp")
    add_option(info.add_argument_group("output"), "json")
    info.set_defaults(handler=run_info)

    folds = commands.add_parser("folds", help="write a k-fold cross-validation manifest (JSON)",
                                description="Split the images into k folds (by default exactly "
                                "scikit-learn's KFold(shuffle=True)) with a validation subset per fold, "
                                "and save the stems as a JSON manifest.")
    _add_data_source(folds)
    add_options(folds.add_argument_group("folds"), FOLDS)
    add_option(folds.add_argument_group("output"), "out", required=True, metavar="FILE",
               help="fold manifest to write (JSON)")
    folds.set_defaults(handler=run_folds)

    download = commands.add_parser(
        "download", help="download NuInsSeg from its authors' Zenodo record, verified and checked",
        description="Download NuInsSeg (665 H&E tiles, 31 organs; Mahbod et al., Sci Data 11:295, 2024; "
        "CC BY 4.0) from its authors' Zenodo record 10518968 (doi:10.5281/zenodo.10518968). The archive's "
        "md5 is checked against the record before anything is unpacked, an interrupted download resumes "
        "where it stopped, and the unpacked folder is checked like `data info`. Then `--data nuinsseg` "
        "names it.")
    download.add_argument("name", choices=sorted(DATASETS), metavar="NAME", help="data set: nuinsseg")
    add_options(download.add_argument_group("run"), ("force", "from_archive", "keep_archive", "quiet"))
    add_option(download.add_argument_group("output"), "out", help="folder to create",
               default_text="the folder `nucleisam data path nuinsseg` prints")
    download.set_defaults(handler=run_download)

    path = commands.add_parser("path", help="print the folder `data download` installs a data set in",
                               description="Print the folder `nucleisam data download NAME` installs into "
                               "(under $NUCLEISAM_HOME, else the user cache), which `--data NAME` names.")
    path.add_argument("name", choices=sorted(DATASETS), metavar="NAME", help="data set: nuinsseg")
    path.set_defaults(handler=run_path)

    data.set_defaults(handler=lambda _args: _print_help(data))


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def format_summary(summary: DatasetSummary) -> str:
    """Human-readable summary, one fact per line."""
    lines = [
        f"data:     {summary.root} ({summary.layout} layout)",
        f"images:   {summary.images:,}",
        f"nuclei:   {summary.nuclei:,}",
        f"organs:   {len(summary.organs)}",
    ]
    width = max((len(name) for name in summary.organs), default=0)
    for name, count in summary.organs.items():
        lines.append(f"  {name:<{width}}  {count.images:>5,} images  {count.nuclei:>7,} nuclei")
    lines.append(
        f"tiles with vague areas: {summary.tiles_with_vague_areas:,} "
        f"({summary.tiles_with_substantial_vague_areas:,} with more than "
        f"{SUBSTANTIAL_VAGUE_FRACTION:.0%} of the tile vague)"
    )
    lines.extend(_resolution_lines(summary.resolution))
    if summary.problems:
        lines.append(f"problems: {len(summary.problems)} (these tiles are left out; "
                     "--strict makes them errors)")
        lines.extend(f"  - {problem}" for problem in summary.problems)
    else:
        lines.append("problems: none")
    return "\n".join(lines)


def _resolution_lines(resolution: dict[str, Any]) -> list[str]:
    """``resolution: 0.5 µm/px for a run (recorded in the images); all 6 images record 0.5 µm/px`` and
    the warning a run would print, if any."""
    if not resolution:
        return []
    lines = [f"resolution: {resolution['mpp']:g} µm/px for a run ({resolution['source']}); "
             f"{resolution['recorded']['text']}"]
    if resolution["warning"]:
        lines.append(f"  warning: {resolution['warning']}")
    return lines


def run_info(args: argparse.Namespace) -> int:
    if args.mpp is not None:
        DataConfig(mpp=args.mpp)  # the range a run accepts, as a one-line error naming data.mpp
    dataset = _open(args)
    summary = summarize(dataset, mpp=args.mpp)
    if summary.problems and summary.images == 0:
        # Nothing usable is an error with or without --strict: usually one option fits no file.
        listing = "\n  - ".join(summary.problems)
        raise NucleisamError(f"no usable images: {len(summary.problems)} problem(s):\n  - {listing}")
    if args.strict and summary.problems:
        dataclasses.replace(dataset, problems=summary.problems).raise_for_problems()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(format_summary(summary))
    return 0


def run_folds(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.is_dir():
        raise NucleisamError(f"--out {out} is a folder; give a file name such as {out / 'folds.json'}.")
    dataset = _open(args)
    for problem in dataset.problems:
        print(f"nucleisam: warning: {problem} (left out)", file=sys.stderr)
    if not dataset.samples:
        raise NucleisamError(f"no usable image/label pairs in {dataset.root}; nothing to split.")
    manifest = make_folds(dataset.samples, k=args.k, seed=args.seed, group=args.group,
                          val_fraction=args.val_fraction, val_seed=args.val_seed)
    # The output folder is created only once the folds exist, so a failed run leaves nothing behind.
    ensure_output_dir(out.parent)
    try:
        manifest.save(out)
    except OSError as exc:
        raise NucleisamError(f"cannot write {out} (--out): {exc.strerror or exc}.") from exc
    grouping = "grouped by organ" if args.group else "image-level"
    print(f"{manifest.k} folds ({grouping}, seed {manifest.seed}) over {len(manifest.stems)} images:")
    for fold in manifest.folds:
        print(f"  fold {fold.index}: train {len(fold.train):>4}  val {len(fold.val):>3}  "
              f"test {len(fold.test):>4}")
    print(f"wrote {out}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.from_archive:
        result = install_from_archive(args.name, args.from_archive, args.out, force=args.force,
                                      progress=progress)
    else:
        result = download_dataset(args.name, args.out, force=args.force, keep_archive=args.keep_archive,
                                  progress=progress)
    for note in result.notes:
        print(f"nucleisam: note: {note}", file=sys.stderr)
    dataset = result.dataset
    print(format_summary(result.summary))
    state = " (already installed; --force installs it again)" if result.already_present else ""
    print(f"{dataset.title} is ready in {result.root}{state}")
    data = dataset.name if result.root == default_data_dir(dataset).absolute() else str(result.root)
    print(f"use it with --data {data}, e.g. nucleisam cv --data {data} --out runs/cv5")
    print(f"Please cite: {dataset.citation}.")
    print(f"Licence: {dataset.licence} (see {result.root / 'ATTRIBUTION.md'}).")
    return 0


def run_path(args: argparse.Namespace) -> int:
    print(default_data_dir(get_dataset(args.name)))
    return 0
