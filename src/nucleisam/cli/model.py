"""``nucleisam model info``: the network a configuration builds, part by part.

Also home of :func:`add_model_arguments` / :func:`model_config_from_args`, the model options other
command groups (training, prediction) share.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nucleisam.config import HEADS, MODES, ConfigError, ModelConfig, from_dict, to_dict

#: The option setting each model key, named next to an error about that key.
MODEL_OPTIONS = {
    "model.mode": "--mode",
    "model.head": "--head",
    "model.input_size": "--input-size",
    "model.lora.rank": "--lora-rank",
    "model.lora.alpha": "--lora-alpha",
    "model.lora.dropout": "--lora-dropout",
    "model.lora.blocks": "--lora-blocks",
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--mode --head --input-size --lora-rank --lora-alpha --lora-dropout --lora-blocks``."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--mode",
        choices=MODES,
        default="lora",
        help="what is fine-tuned: lora (LoRA on the encoder + head; default), full (encoder + head), "
        "decoder (head only), seed (the seed notebook: LoRA r=4 alpha=1 on 41 layers + SAM decoder)",
    )
    group.add_argument(
        "--head",
        choices=HEADS,
        default=None,
        help="instance: light multi-scale decoder predicting foreground, centre and boundary distance "
        "(default); sam: SAM's prompt-free mask decoder (binary; default and only choice with --mode seed)",
    )
    group.add_argument(
        "--input-size",
        type=int,
        default=1024,
        metavar="N",
        help="square model input, multiple of 16: 1024 = SAM's convention (default), 512 = NuInsSeg tiles "
        "at native size (4x less compute)",
    )
    group.add_argument("--lora-rank", type=int, default=None, metavar="R", help="LoRA rank (default 4)")
    group.add_argument("--lora-alpha", type=float, default=None, metavar="A", help="LoRA alpha (default 4)")
    group.add_argument(
        "--lora-dropout", type=float, default=None, metavar="P", help="LoRA dropout (default 0)"
    )
    group.add_argument(
        "--lora-blocks",
        type=int,
        nargs="+",
        default=None,
        metavar="I",
        help="adapt only these TinyViT attention blocks (0-9), e.g. 6 7 8 9 ('late LoRA'); default all",
    )


def model_config_from_args(args: argparse.Namespace, *, weights: str = "auto") -> ModelConfig:
    """The :class:`~nucleisam.config.ModelConfig` described by :func:`add_model_arguments` options."""
    lora = {
        key: value
        for key, value in (
            ("rank", args.lora_rank),
            ("alpha", args.lora_alpha),
            ("dropout", args.lora_dropout),
            ("blocks", args.lora_blocks),
        )
        if value is not None
    }
    values = {"mode": args.mode, "head": args.head, "input_size": args.input_size, "weights": weights}
    try:
        return from_dict(ModelConfig, {**values, "lora": lora or None}, prefix="model")
    except ConfigError as exc:
        if exc.key not in MODEL_OPTIONS:
            raise
        raise ConfigError(f"{exc} Set it with {MODEL_OPTIONS[exc.key]}.", exc.key) from exc


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="inspect the network (parameter counts, LoRA targets)")
    commands = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    info = commands.add_parser(
        "info",
        help="parameter table per part (total, trainable, %%), LoRA targets, input size",
        description="Build the network for the given options and print its parameters per part. Without "
        "--checkpoint no weights are loaded (counts do not depend on them).",
    )
    add_model_arguments(info)
    info.add_argument(
        "--checkpoint", metavar="PATH", help="also load and verify this mobile_sam.pt (keys, shapes, sha256)"
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(handler=_info)
    parser.set_defaults(handler=lambda _args: _print_help(parser))


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def model_summary(model: Any, *, weights_source: str) -> dict[str, Any]:
    """JSON-ready description of a built :class:`~nucleisam.model.NucleiSam`."""
    config = model.config
    rows = model.parameter_table()
    return {
        "mode": config.mode,
        "head": config.head,
        "input_size": config.input_size,
        "weights": {"source": weights_source, "sha256": model.base_checkpoint_sha256},
        "lora": (
            {**to_dict(config.lora), "scale": config.lora.scale, "layers": list(model.lora_targets)}
            if config.uses_lora
            else None
        ),
        "parts": rows[:-1],
        "total": rows[-1],
    }


def _info(args: argparse.Namespace) -> int:
    from nucleisam.model.network import assemble_model, load_base_weights

    config = model_config_from_args(args, weights=args.checkpoint or "none")
    if args.checkpoint:
        state, sha256, source = load_base_weights(args.checkpoint)
    else:
        state, sha256, source = None, "random", "none loaded (parameter counts do not depend on weights)"
    model = assemble_model(config, state_dict=state, base_checkpoint_sha256=sha256, source=source)
    summary = model_summary(model, weights_source=source)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_summary(summary))
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    """The text table ``nucleisam model info`` prints."""
    size = summary["input_size"]
    lines = [
        f"MobileSAM  mode={summary['mode']}  head={summary['head']}  input {size}x{size}",
        f"weights: {summary['weights']['source']}"
        + (f" (sha256 {summary['weights']['sha256']})" if summary["weights"]["sha256"] != "random" else ""),
        "",
        f"{'part':<44} {'parameters':>12} {'trainable':>12} {'trainable %':>12}  runs",
    ]
    for row in [*summary["parts"], summary["total"]]:
        runs = "" if row["part"] == "total" else ("yes" if row["runs"] else "no")
        lines.append(
            f"{row['part']:<44} {row['parameters']:>12,} {row['trainable']:>12,} "
            f"{row['trainable_percent']:>11.4f}%  {runs}"
        )
    lora = summary["lora"]
    lines.append("")
    if lora is None:
        lines.append("LoRA: none")
    else:
        targets = ", ".join(lora["targets"])
        blocks = "all" if lora["blocks"] is None else " ".join(str(b) for b in lora["blocks"])
        lines.append(
            f"LoRA: rank {lora['rank']}, alpha {lora['alpha']:g} (scale {lora['scale']:g}), dropout "
            f"{lora['dropout']:g}, targets {targets}, blocks {blocks}: {len(lora['layers'])} layers"
        )
    return "\n".join(lines) + "\n"
