"""`nucleisam export`: a fine-tuned adapter as one ONNX or TorchScript file for other runtimes."""

from __future__ import annotations

import argparse
from pathlib import Path

from nucleisam.cli.options import add_option, add_options
from nucleisam.utils.atomic import check_outputs_free, ensure_output_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a fine-tuned model as ONNX or TorchScript (QuPath, ONNX Runtime, libtorch)",
        description="Export an adapter with LoRA merged into the base weights and SAM's normalisation "
        "inside: input float32 (B, 3, N, N) RGB 0-255 (fixed N, any batch), outputs the foreground "
        "probability and, with the instance head, the centre and boundary distance maps, each "
        "(B, 1, N, N). The file's metadata (key 'nucleisam') records the post-processing parameters, "
        "the training resolution and the input size.",
    )
    add_option(parser, "adapter", required=True)
    add_option(parser, "file_format", required=True)
    add_option(parser, "out", required=True, metavar="FILE", help="the file to write (.onnx or .pt)")
    add_option(parser, "input_size", key=None, default=None, help="fixed tile size N of the file",
               default_text="the model's input size: no resizing inside")
    add_options(parser, ("checkpoint", "allow_checkpoint_mismatch"))
    add_option(parser, "overwrite")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from nucleisam.model.export import export_adapter, read_export_metadata

    out = Path(args.out)
    ensure_output_dir(out.parent, option="--out")
    check_outputs_free([out], overwrite=args.overwrite)
    export_adapter(args.adapter, out, args.file_format, input_size=args.input_size,
                   checkpoint=args.checkpoint, allow_checkpoint_mismatch=args.allow_checkpoint_mismatch)
    metadata = read_export_metadata(out)
    size = metadata["input_size"]
    mpp = metadata["train_mpp"]
    print(f"wrote {out} ({args.file_format}, {out.stat().st_size / 2**20:.1f} MiB): input image float32 "
          f"(batch, 3, {size}, {size}) RGB 0-255; outputs {', '.join(metadata['outputs'])}; "
          f"training resolution {f'{mpp} µm/px' if mpp else 'not recorded'}")
    return 0
