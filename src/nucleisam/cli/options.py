"""Every command-line option, defined once: its flag, how it is read, and what it sets.

Commands add options from :data:`OPTIONS` by name (:func:`add_options`, :func:`add_option`), so an
option has the same spelling, type, help and default in every command that takes it. An option that
fills a configuration key (``--lora-rank`` → ``model.lora.rank``) is turned into the ``values`` of
:func:`nucleisam.config.load_config` by :func:`config_values`; library errors name those keys or the
parameter names in :attr:`Option.params`, and :func:`name_flags` shows the user the flag instead.

Old spellings stay accepted until :data:`REMOVED_IN`, each with one warning line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nucleisam.data.download import resolve_data_root
from nucleisam.predict.slide import CHUNK_TILES

#: The release that drops the deprecated spellings.
REMOVED_IN = "0.3"

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_spec(text: str) -> str:
    """argparse type of ``--device``: the policy of :func:`nucleisam.model.inference.resolve_device`."""
    if _DEVICE.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N")
    return text


def postprocess_workers_spec(text: str) -> int | str:
    """argparse type of ``--postprocess-workers``: ``auto`` or a number of threads ≥ 0."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto or a number of threads (0 or more)")
    return value


@dataclass(frozen=True)
class Option:
    """One option. ``dest`` (by default the flag without dashes, ``-`` → ``_``) is its name here and
    in ``args``.

    ``default`` is what the option means when left out, shown in its help; commands driven by a
    configuration file leave unset options ``None`` so that the file decides (its defaults are the
    same). ``key`` is the configuration key the option fills; ``params`` the library parameter names
    that errors may use for it. ``path`` values are made absolute, as ``config.yaml`` records them.
    """

    flag: str
    help: str
    default: Any = None
    default_text: str | None = None
    key: str | None = None
    params: tuple[str, ...] = ()
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: Sequence[Any] | None = None
    nargs: str | None = None
    switch: bool = False
    repeat: bool = False
    path: bool = False
    required: bool = False
    deprecated: tuple[str, ...] = ()
    dest: str = ""

    def __post_init__(self) -> None:
        if not self.dest:
            object.__setattr__(self, "dest", self.flag.removeprefix("--").replace("-", "_"))

    @property
    def names(self) -> tuple[str, ...]:
        """Configuration key and parameter names that mean this option in a library message."""
        return tuple(name for name in (self.key, *self.params) if name)

    def help_text(self) -> str:
        shown = self.default_text if self.default_text is not None else self.default
        return self.help if shown is None or self.switch else f"{self.help} (default {shown})"


def _define(*options: Option) -> dict[str, Option]:
    return {option.dest: option for option in options}


OPTIONS: dict[str, Option] = _define(
    # data
    Option("--data", "NuInsSeg-layout folder (organ folders, or one organ folder), a folder of images with "
           ".xml annotations beside them, or 'nuinsseg' for the copy `nucleisam data download` installed",
           key="data.root", params=("root", "data_root"), metavar="ROOT", path=True),
    Option("--images", "folder of images, paired by file stem with --masks (instead of --data)",
           key="data.images", params=("images",), metavar="DIR", path=True),
    Option("--masks", "folder of ground-truth instance label maps (TIFF/PNG/NPY, 0 = background) or Aperio "
           "XML, paired with the images by file stem", key="data.masks", params=("masks", "gt_dir"),
           metavar="DIR", path=True, deprecated=("--gt",)),
    Option("--binary-masks", "accept binary masks and split them into connected components (touching nuclei "
           "then count as one)", key="data.binary_masks", params=("binary_masks",), switch=True),
    Option("--strict", "treat any problem in the data (unpaired or unreadable files) as an error instead of "
           "leaving those tiles out", key="data.strict", params=("strict",), switch=True),
    Option("--vague-masks", "folder of vague (ambiguous) area masks paired by file stem", metavar="DIR",
           default_text="the data set's own with --data, else none", params=("vague_dir",),
           deprecated=("--ambiguous",)),
    Option("--pred", "folder of predicted instance label maps (TIFF/PNG/NPY, 0 = background; a `nucleisam "
           "predict` output folder as it is)", params=("pred_dir",), metavar="DIR", required=True),
    Option("--mpp", "microns per pixel of the images, e.g. 0.25 for a 40x scan, 0.5 for 20x. For a run's "
           "data (cv, train, baseline) it is recorded in config.yaml and in the trained model, and predict "
           "reads slides at that scale; for predict's inputs it overrides what a slide records and adds µm² "
           "areas to CSV/GeoJSON and the resolution to label TIFFs", key="data.mpp", params=("mpp",),
           type=float, metavar="MICRONS",
           default_text="for a run's data what the images record, else 0.25 (NuInsSeg's); in predict what "
           "a slide records, none for other images"),
    # folds
    Option("--k", "number of cross-validation folds", default=5, key="data.k", params=("k",), type=int,
           metavar="K"),
    Option("--seed", "seed of the test-fold split", default=19,
           default_text="19, the NuInsSeg authors' split", key="data.seed", params=("seed",), type=int,
           metavar="N"),
    Option("--group", "keep each organ's images in a single test fold (needs at least K organs)",
           key="data.group", params=("group",), choices=("organ",), default_text="none, images split freely"),
    Option("--val-fraction", "share of each training fold held out for validation (epoch selection, tuning), "
           "stratified by organ; a fraction in (0, 1)", default=0.125, key="data.val_fraction",
           params=("val_fraction",), type=float, metavar="F"),
    Option("--val-seed", "seed of the validation draw", default=0, key="data.val_seed", params=("val_seed",),
           type=int, metavar="N"),
    Option("--folds", "fold manifest to use (e.g. a cv run's folds.json) instead of --k/--seed/--group/"
           "--val-fraction/--val-seed", params=("folds",), metavar="FILE"),
    Option("--fold", "run only this fold (0-based), scored on its test images like `cv`",
           params=("fold", "only_folds"), type=int, metavar="I"),
    Option("--all", "train one model on all images (a validation split is held out for selection and "
           "tuning), for `nucleisam predict`", switch=True),
    # model
    Option("--mode", "what is fine-tuned: lora (LoRA on the encoder + head), full (encoder + head), decoder "
           "(head only), seed (the seed notebook: LoRA r=4 alpha=1 on 41 layers + SAM decoder)",
           default="lora", key="model.mode", choices=("lora", "full", "decoder", "seed")),
    Option("--head", "instance: light multi-scale decoder predicting foreground, centre and boundary "
           "distance for watershed; sam: SAM's prompt-free mask decoder (binary)", key="model.head",
           choices=("instance", "sam"), default_text="instance; sam with --mode seed"),
    Option("--input-size", "square model input in pixels, a multiple of 16: 1024 = SAM's convention, 512 = "
           "NuInsSeg tiles at native size (4x less compute)", default=1024, key="model.input_size",
           params=("input_size",), type=int, metavar="PX"),
    Option("--lora-rank", "LoRA rank r (inner dimension of each adapter)", default=4, key="model.lora.rank",
           type=int, metavar="R"),
    Option("--lora-alpha", "LoRA alpha (the update is scaled by alpha / rank)", default=4.0,
           key="model.lora.alpha", type=float, metavar="A"),
    Option("--lora-dropout", "dropout probability on the LoRA input while training", default=0.0,
           key="model.lora.dropout", type=float, metavar="P"),
    Option("--lora-targets", "encoder Linear layers to wrap, any of qkv proj fc1 fc2 head",
           key="model.lora.targets", nargs="+", metavar="NAME", default_text="qkv proj fc1 fc2"),
    Option("--lora-blocks", "adapt only these TinyViT attention blocks (0-9), e.g. 6 7 8 9 ('late LoRA')",
           key="model.lora.blocks", type=int, nargs="+", metavar="I", default_text="all ten"),
    Option("--checkpoint", "MobileSAM base checkpoint (mobile_sam.pt)", key="model.weights",
           params=("checkpoint", "weights"), metavar="PATH", path=True,
           default_text="the cached official copy, see `nucleisam weights path`"),
    Option("--adapter", "fine-tuned adapter (.safetensors) written by training", params=("adapter",),
           metavar="FILE"),
    Option("--method", "model (the --adapter's or --model's network) or classical (hematoxylin threshold "
           "+ watershed, no model or weights)", params=("method",), choices=("model", "classical"),
           default_text="model with --adapter or --model"),
    Option("--allow-checkpoint-mismatch", "accept a base checkpoint other than the one the adapter was "
           "trained on", params=("allow_checkpoint_mismatch",), switch=True),
    Option("--model", "a model written by `nucleisam export --format onnx` (with --backend onnxruntime)",
           params=("model",), metavar="FILE.onnx"),
    Option("--backend", "torch (the --adapter in PyTorch) or onnxruntime (the --model file in ONNX Runtime, "
           "the faster on a CPU)", default="torch", params=("backend",), choices=("torch", "onnxruntime")),
    Option("--format", "exported file format: onnx (ONNX Runtime, predict --backend onnxruntime) or "
           "torchscript (QuPath's DJL extension, libtorch)", params=("file_format",),
           choices=("onnx", "torchscript"), dest="file_format"),
    # run
    Option("--config", "YAML/TOML configuration file (see configs/; a run's config.yaml repeats it)",
           params=("config",), metavar="FILE", default_text="none, built-in defaults"),
    Option("--set", "set one configuration key, e.g. --set train.epochs=10 (repeatable; applied after "
           "--config and the other options)", metavar="KEY=VALUE", repeat=True, dest="overrides"),
    Option("--device", "where the model runs: auto (a GPU if torch sees one), cpu, cuda or cuda:N",
           default="auto", key="train.device", params=("device",), type=device_spec, metavar="DEVICE"),
    Option("--resume", "continue the run in --out from its last checkpoint (finished folds are kept)",
           params=("resume",), switch=True),
    Option("--tile", "tile side in pixels", params=("tile",), type=int, metavar="PX",
           default_text="512; with --model the file's input size"),
    Option("--overlap", "tile overlap in pixels, at least the diameter of the largest nucleus", default=64,
           params=("overlap",), type=int, metavar="PX"),
    Option("--batch-size", "tiles per network call", default=4, params=("batch_size",), type=int,
           metavar="N"),
    Option("--postprocess-workers", "threads post-processing tiles while the network runs the next batch "
           "(0: one after the other; the output is the same); auto: all cores but one with the network on "
           "a GPU, all with the classical method, 1 with the network on the CPU; per Dask worker, its "
           "share of the cores (one core: 0)", default="auto", params=("postprocess_workers",),
           type=postprocess_workers_spec, metavar="auto|N"),
    Option("--tissue", "where slides are segmented: auto (tissue detected on the thumbnail), none (every "
           "tile), or a mask image of the whole slide at any size (white = tissue)", default="auto",
           params=("tissue",), metavar="auto|none|MASK.png"),
    Option("--workers", "Dask LocalCluster of N single-threaded worker processes, one model each (0 or 1: "
           "this process, no Dask)", default=0, params=("workers",), type=int, metavar="N"),
    Option("--scheduler", "run slide chunks on an existing Dask cluster, e.g. tcp://host:8786 (dask-jobqueue "
           "on SLURM)", params=("scheduler",), metavar="ADDRESS", default_text="none"),
    Option("--chunk-tiles", "tiles per side of a slide chunk, the unit of work", default=CHUNK_TILES,
           params=("chunk_tiles",), type=int, metavar="K"),
    Option("--vague-threshold", "an instance with more than this share of its area in a vague (ambiguous) "
           "area is removed (fraction 0-1; NucEval)", default=0.25, params=("vague_threshold",),
           type=float, metavar="F", deprecated=("--ambiguous-threshold",)),
    Option("--zone-width", "ignore pixels within this distance of a ground-truth nucleus border (NucEval's "
           "ring; 0 = off)", default=0, params=("zone_width",), type=int, metavar="PX"),
    Option("--force", "download and install again, replacing what is there", params=("force",), switch=True),
    Option("--quiet", "no progress bars", switch=True),
    Option("--from-archive", "install from this archive downloaded elsewhere (checked against the record's "
           "checksum when Zenodo can be reached)", params=("archive",), metavar="FILE.zip"),
    Option("--keep-archive", "keep the downloaded zip beside the folder (by default it is deleted)",
           switch=True),
    Option("--check", "also verify the file's sha256 (exit 1 if missing or different)", switch=True),
    # output
    Option("--out", "output folder (created if needed)", params=("out", "out_dir"), metavar="DIR"),
    Option("--formats", "comma-separated output formats", params=("formats",), metavar="LIST"),
    Option("--overwrite", "redo and replace existing output files", params=("overwrite",), switch=True),
    Option("--json", "print JSON instead of text", switch=True),
)

#: Where the data comes from: a NuInsSeg root, or folders of images and masks.
DATA_SOURCE = ("data", "images", "masks", "binary_masks", "strict")
#: How the images are split into cross-validation folds.
FOLDS = ("k", "seed", "group", "val_fraction", "val_seed")
#: Which network is built, and from which base weights.
MODEL = ("mode", "head", "input_size", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets",
         "lora_blocks", "checkpoint")
#: A configuration file and ``--set`` overrides.
CONFIG = ("config", "overrides")


class _DeprecatedSpelling(argparse.Action):
    """Stores like ``store`` under the new option's dest, after one warning line on stderr."""

    def __init__(self, option_strings: list[str], dest: str, *, use: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.use = use

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if values is None:  # an optional positional left out
            return
        warn_deprecated(option_string or self.metavar, self.use)
        setattr(namespace, self.dest, values)


def warn_deprecated(old: str, new: str) -> None:
    """One warning line on stderr for an old spelling that still works."""
    print(f"nucleisam: warning: {old} is deprecated, use {new} (removed in {REMOVED_IN})", file=sys.stderr)


def add_option(container: Any, name: str, *, from_config: bool = False, **changes: Any) -> argparse.Action:
    """Add the option ``name`` of :data:`OPTIONS` to a parser or argument group.

    ``changes`` replace fields of the definition for this command (e.g. ``required=True`` or a more
    specific ``help``). With ``from_config`` an option that fills a configuration key stays ``None``
    when left out (a switch too), so that a configuration file can set it. Deprecated spellings are
    added hidden, with a warning.
    """
    option = dataclasses.replace(OPTIONS[name], **changes) if changes else OPTIONS[name]
    from_config = from_config and option.key is not None
    default = None if from_config else option.default
    if option.switch:
        action = container.add_argument(option.flag, action="store_true",
                                        default=None if from_config else False, help=option.help_text())
    elif option.repeat:
        action = container.add_argument(option.flag, dest=option.dest, action="append", default=[],
                                        metavar=option.metavar, help=option.help_text())
    else:
        kwargs = {"type": option.type, "metavar": option.metavar, "choices": option.choices,
                  "nargs": option.nargs}
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        action = container.add_argument(option.flag, dest=option.dest, default=default,
                                        required=option.required, help=option.help_text(), **kwargs)
        for old in option.deprecated:
            container.add_argument(old, dest=option.dest, action=_DeprecatedSpelling, use=option.flag,
                                   default=default, help=argparse.SUPPRESS, **kwargs)
    return action


def add_options(container: Any, names: Iterable[str], *, from_config: bool = False) -> None:
    """Add several options of :data:`OPTIONS` (see :func:`add_option`)."""
    for name in names:
        add_option(container, name, from_config=from_config)


def add_deprecated_root(parser: argparse.ArgumentParser) -> None:
    """The data root as a positional argument (``data info ROOT``), kept until :data:`REMOVED_IN`."""
    parser.add_argument("root", nargs="?", metavar="ROOT", action=_DeprecatedSpelling, use="--data ROOT",
                        help=argparse.SUPPRESS)


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted configuration key → value of every option given that fills one (paths made absolute),
    for ``load_config(..., values=...)``; options left out are not included."""
    values: dict[str, Any] = {}
    for option in OPTIONS.values():
        value = getattr(args, option.dest, None)
        if option.key is None or value is None or value is False:
            continue
        if option.dest == "data":
            value = resolve_data_root(value)
        if option.path:
            value = str(Path(value).resolve())
        values[option.key] = value
    return values


def name_flags(message: str, present: Collection[str], key: str | None = None) -> str:
    """``message`` with the flags of the options it names, for a command with the options ``present``.

    A parameter or configuration key in parentheses, ``(data.k)``, becomes its flag, ``(--k)``; other
    mentions (a configuration key anywhere, ``name=value``, or the error's own ``key``) add
    "(option --k)" at the end. Names of options the command lacks are left as they are.
    """
    lookup = {name: option for option in OPTIONS.values() if option.dest in present for name in option.names}
    if not lookup:
        return message

    def named(flag: str, text: str) -> bool:
        return re.search(rf"{re.escape(flag)}(?![\w-])", text) is not None

    def in_place(match: re.Match[str]) -> str:
        option = lookup.get(match.group(1))
        return f"({option.flag})" if option and not named(option.flag, original) else match.group(0)

    original = message
    message = re.sub(r"\(([\w.]+)\)", in_place, message)
    found: list[tuple[int, Option]] = [(-1, lookup[key])] if key in lookup else []
    for name, option in lookup.items():
        escaped = re.escape(name)
        pattern = rf"(?<![\w.-]){escaped}(?![\w-]|\.\w)" if "." in name else rf"(?<![\w.-]){escaped}="
        if (match := re.search(pattern, message)) is not None:
            found.append((match.start(), option))
    flags = [flag for flag in dict.fromkeys(o.flag for _, o in sorted(found, key=lambda f: f[0]))
             if not named(flag, message)]
    if not flags:
        return message
    hint = f"(option{'s' if len(flags) > 1 else ''} {', '.join(flags)})"
    return f"{message[:-1]} {hint}." if message.endswith(".") else f"{message} {hint}"
