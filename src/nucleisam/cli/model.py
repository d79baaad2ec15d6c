"""``nucleisam model info``: the network a configuration builds, part by part."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nucleisam.cli.options import CONFIG, MODEL, add_option, add_options, config_values
from nucleisam.config import to_dict


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="inspect the network (parameter counts, LoRA targets)")
    commands = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    info = commands.add_parser(
        "info",
        help="parameter table per part (total, trainable, %%), LoRA targets, input size",
        description="Build the network for the given options (or the model section of --config) and print "
        "its parameters per part. Without --checkpoint no weights are loaded (counts do not depend on "
        "them); with it the file is loaded and checked key by key.",
    )
    add_options(info.add_argument_group("model"), MODEL, from_config=True)
    add_options(info.add_argument_group("run"), CONFIG, from_config=True)
    add_option(info.add_argument_group("output"), "json")
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
    from nucleisam.config import load_run_config
    from nucleisam.model.network import assemble_model, load_base_weights

    values = {"model.weights": "none", **config_values(args)}  # no weights to load: counts only
    config = load_run_config(args.config, args.overrides, values).model
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
