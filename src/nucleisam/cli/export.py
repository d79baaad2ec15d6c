"""`nucleisam export`: a fine-tuned adapter as one ONNX or TorchScript file for other runtimes."""

from __future__ import annotations

import argparse
from pathlib import Path

from nucleisam.exports import check_outputs_free
from nucleisam.utils.atomic import ensure_output_dir


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
    parser.add_argument("--adapter", required=True, metavar="FILE", help="fine-tuned adapter (.safetensors)")
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"], dest="file_format",
                        help="onnx (ONNX Runtime, predict --backend onnxruntime) or torchscript (QuPath)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write (.onnx or .pt)")
    parser.add_argument("--input-size", type=int, default=None, metavar="N",
                        help="fixed tile size of the file (default: the model input size, no resizing)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="base MobileSAM checkpoint (default: the cached official mobile_sam.pt)")
    parser.add_argument("--allow-checkpoint-mismatch", action="store_true",
                        help="accept a base checkpoint other than the one the adapter was trained on")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
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
