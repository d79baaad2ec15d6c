"""Command-line interface: a thin layer over the Python API.

Each command group lives in its own module with a ``register(subparsers)`` function that adds its
sub-parser and sets ``handler`` to a function ``(argparse.Namespace) -> int``; options come from
:mod:`nucleisam.cli.options`, where each is defined once. User errors
(:class:`~nucleisam.errors.NucleisamError`) and operating-system errors (full disk, read-only
folder, permissions) are printed as one line without a traceback, the configuration keys and
parameters they name shown as the command's flags, and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from nucleisam import __version__
from nucleisam.cli.options import name_flags
from nucleisam.errors import NucleisamError, describe_os_error

# Command-group modules, in the order `nucleisam --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "nucleisam.cli.data",
    "nucleisam.cli.model",
    "nucleisam.cli.weights",
    "nucleisam.cli.train",
    "nucleisam.cli.baseline",
    "nucleisam.cli.evaluate",
    "nucleisam.cli.predict",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nucleisam",
        description="Fine-tune MobileSAM with LoRA for nuclei instance segmentation, "
        "evaluate it honestly, and run it on new H&E images.",
    )
    parser.add_argument("--version", action="version", version=f"nucleisam {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except NucleisamError as exc:
        message = name_flags(str(exc), vars(args), key=getattr(exc, "key", None))
        print(f"nucleisam: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:  # one not met inside an atomic write: a read, a folder, a lock
        where = exc.filename if exc.filename is not None else "a file"
        print(f"nucleisam: error: {describe_os_error(exc.errno or 0, where)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nucleisam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
