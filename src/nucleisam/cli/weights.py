"""``nucleisam weights download|path``: the pretrained MobileSAM checkpoint in the local cache."""

from __future__ import annotations

import argparse

from nucleisam.cli.options import add_option, add_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("weights", help="download or locate the pretrained MobileSAM weights")
    commands = parser.add_subparsers(dest="weights_command", metavar="SUBCOMMAND")
    download = commands.add_parser(
        "download",
        help="fetch mobile_sam.pt into the cache and verify its sha256",
        description="Download the official MobileSAM weights (40.7 MB) into $NUCLEISAM_HOME, else the user "
        "cache folder (e.g. ~/.cache/nucleisam), verifying the sha256 before the file is put in place.",
    )
    add_options(download.add_argument_group("run"), ("force", "quiet"))
    download.set_defaults(handler=_download)
    path = commands.add_parser(
        "path",
        help="print where the weights are (or would be) cached",
        description="Print the cache path of mobile_sam.pt. With --check, also verify the file and exit 1 "
        "if it is missing or its sha256 differs.",
    )
    add_option(path.add_argument_group("run"), "check")
    path.set_defaults(handler=_path)
    parser.set_defaults(handler=lambda _args: _print_help(parser))


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _download(args: argparse.Namespace) -> int:
    from nucleisam.model.checkpoint import download_checkpoint

    path = download_checkpoint(force=args.force, progress=not args.quiet)
    print(path)
    return 0


def _path(args: argparse.Namespace) -> int:
    import sys

    from nucleisam.model.checkpoint import CHECKPOINT_SHA256, default_checkpoint_path, file_sha256

    path = default_checkpoint_path()
    print(path)
    if not args.check:
        return 0
    if not path.is_file():
        print(f"missing: run `nucleisam weights download` or put mobile_sam.pt at {path}", file=sys.stderr)
        return 1
    actual = file_sha256(path)
    if actual != CHECKPOINT_SHA256:
        print(
            f"sha256 {actual} differs from the official {CHECKPOINT_SHA256}: "
            "run `nucleisam weights download --force`",
            file=sys.stderr,
        )
        return 1
    print("verified (sha256 matches the official checkpoint)", file=sys.stderr)
    return 0
