"""Exporting a fine-tuned model as one self-contained file for other runtimes.

Two formats: ONNX (ONNX Runtime, OpenCV DNN, TensorRT, …; also ``nucleisam predict --backend
onnxruntime``) and TorchScript (libtorch, QuPath's Deep Java Library extension). The exported
network is the inference copy of :func:`~nucleisam.model.prepared.prepare_for_inference` (LoRA
merged into the base weights, BatchNorm folded) with SAM's pixel normalisation inside:

- input ``image``: float32 (B, 3, N, N) RGB on the 0–255 scale (TorchScript also takes uint8);
  ``N`` is fixed at export (the input size), the batch ``B`` is free;
- outputs, each float32 (B, 1, N, N): ``foreground`` as a probability (the sigmoid is inside, as
  :func:`~nucleisam.model.inference.map_batch` returns it), and with the instance head
  ``center_distance`` and ``boundary_distance`` in [0, 1].

The file carries one JSON document (:func:`export_metadata`) under the key ``nucleisam``: ONNX
``metadata_props``, TorchScript extra file ``nucleisam.json``. It records the input and outputs,
the post-processing parameters to turn the maps into nuclei, the training resolution (``train_mpp``;
NuInsSeg's for adapters that record none) and where the model came from.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nucleisam import __version__
from nucleisam.config import to_dict
from nucleisam.errors import NucleisamError
from nucleisam.model.adapter import (
    adapter_postprocess,
    adapter_train_mpp,
    load_adapter,
    model_entry,
)
from nucleisam.model.heads import INSTANCE_MAPS
from nucleisam.model.mobilesam import check_input_size
from nucleisam.model.network import NucleiSam
from nucleisam.model.prepared import prepare_for_inference
from nucleisam.utils.atomic import atomic_output, write_bytes_atomic
from nucleisam.utils.download import file_sha256

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
METADATA_KEY = "nucleisam"
TORCHSCRIPT_METADATA_FILE = "nucleisam.json"
EXPORT_FORMAT = "nucleisam-export"
EXPORT_FORMAT_VERSION = 1
INPUT_NAME = "image"
#: ONNX operator set: 17 is the lowest with LayerNormalization; 18 is widely supported by runtimes.
ONNX_OPSET = 18


class ExportedNetwork(nn.Module):
    """RGB 0–255 tiles → maps, as the exported file computes them.

    Shapes: (B, 3, N, N) float or uint8 → tuple of (B, 1, N, N) float32 maps in the order of
    :func:`output_names`; ``foreground`` is a probability.
    """

    def __init__(self, model: NucleiSam) -> None:
        super().__init__()
        network = prepare_for_inference(model).cpu().float()
        # Parts the forward never runs stay out of the file: TinyViT's ImageNet classifier, and SAM's
        # prompt encoder and mask decoder under the instance head.
        network.image_encoder.norm_head = network.image_encoder.head = None
        if model.config.head == "instance":
            network.prompt_encoder = network.mask_decoder = None
        self.network = network
        self.names = output_names(model)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.network(images.float())
        return tuple(torch.sigmoid(maps[name]) if name == "foreground" else maps[name] for name in self.names)


def output_names(model: NucleiSam) -> tuple[str, ...]:
    """Names of the exported outputs: the instance head's three maps, or SAM's foreground."""
    return INSTANCE_MAPS if model.config.head == "instance" else ("foreground",)


def export_metadata(
    model: NucleiSam, *, input_size: int, file_format: str, source: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON document stored in an exported file.

    ``source`` is the adapter's metadata (post-processing parameters, ``train_mpp``) plus where it
    came from (``file``, ``sha256``); what it does not record gets the defaults adapters get
    (default post-processing, NuInsSeg's resolution).
    """
    source = source or {}
    postprocess = adapter_postprocess(source, source.get("file", "(no adapter)"))
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "nucleisam_version": __version__,
        "file_format": file_format,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, input_size, input_size],
            "dtype": "float32",
            "scale": "RGB, 0-255 (normalised inside: SAM mean/std)",
        },
        "input_size": input_size,
        "outputs": list(output_names(model)),
        "output_shape": ["batch", 1, input_size, input_size],
        "foreground": "probability (sigmoid applied)",
        "postprocess": to_dict(postprocess),
        "train_mpp": adapter_train_mpp(source),
        "model": model_entry(model.config),
        "base_checkpoint_sha256": model.base_checkpoint_sha256,
        "adapter": {key: source[key] for key in ("file", "sha256") if key in source},
    }


def export_model(
    model: NucleiSam,
    path: str | os.PathLike[str],
    file_format: str,
    *,
    input_size: int | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``path`` as ONNX or TorchScript (atomically); returns ``path``.

    Args:
        model: the fine-tuned network (left unchanged: the export runs an inference copy).
        file_format: ``onnx`` or ``torchscript``.
        input_size: the fixed tile size ``N`` of the file; default the model's input size (no
            resizing inside). Another size exports SAM's resize to the model's input size too.
        source: adapter metadata for :func:`export_metadata`.
    """
    if file_format not in FORMATS:
        raise NucleisamError(f"export format {file_format!r} (--format) is not one of {', '.join(FORMATS)}.")
    size = check_input_size(input_size if input_size is not None else model.config.input_size)
    network = ExportedNetwork(model).eval()
    metadata = export_metadata(model, input_size=size, file_format=file_format, source=source)
    # Batch 2, so that nothing in the traced graph can specialise on a batch of one.
    example = torch.rand(2, 3, size, size) * 255
    with warnings.catch_warnings():
        # Tracing warns about every Python int taken from a shape; the input size is meant to be fixed.
        warnings.simplefilter("ignore")
        if file_format == "onnx":
            _write_onnx(network, example, path, metadata)
        else:
            _write_torchscript(network, example, path, metadata)
    return Path(path)


def _write_onnx(network: ExportedNetwork, example: torch.Tensor, path: str | os.PathLike[str],
                metadata: dict[str, Any]) -> None:
    onnx = _require("onnx", "ONNX export")
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *network.names)}
    with atomic_output(path) as tmp:
        try:
            torch.onnx.export(
                network, (example,), str(tmp), input_names=[INPUT_NAME], output_names=list(network.names),
                dynamic_axes=dynamic, opset_version=ONNX_OPSET, dynamo=False,
            )
        except Exception as exc:  # the exporter raises many types; the user needs one line
            raise NucleisamError(
                f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); try "
                f"--input-size {network.network.config.input_size} (the model's own) or --format torchscript."
            ) from exc
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata, allow_nan=False)
        proto.producer_name, proto.producer_version = "nucleisam", __version__
        onnx.save(proto, str(tmp))


@contextlib.contextmanager
def _torch_jit() -> Iterator[None]:
    """torch.jit warns that it is deprecated (torch >= 2.10), but TorchScript is the format QuPath's
    deep-learning extension loads, so the export keeps it and keeps the warning from users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _write_torchscript(network: ExportedNetwork, example: torch.Tensor, path: str | os.PathLike[str],
                       metadata: dict[str, Any]) -> None:
    extra = {TORCHSCRIPT_METADATA_FILE: json.dumps(metadata, allow_nan=False)}
    buffer = io.BytesIO()  # saved to memory first: the archive's folder is then "archive", not a temp name
    with torch.no_grad(), _torch_jit():
        traced = torch.jit.trace(network, (example,), check_trace=False)
        torch.jit.save(traced, buffer, _extra_files=extra)
    write_bytes_atomic(path, buffer.getvalue())


def export_adapter(
    adapter: str | os.PathLike[str],
    path: str | os.PathLike[str],
    file_format: str,
    *,
    input_size: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    allow_checkpoint_mismatch: bool = False,
) -> Path:
    """Load a fine-tuned adapter (and its base checkpoint) and export it (:func:`export_model`);
    the post-processing parameters and training resolution recorded in the adapter go along."""
    model, metadata = load_adapter(
        adapter, checkpoint=checkpoint, allow_checkpoint_mismatch=allow_checkpoint_mismatch
    )
    source = {**metadata, "file": Path(adapter).name, "sha256": file_sha256(adapter)}
    return export_model(model, path, file_format, input_size=input_size, source=source)


def read_export_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata document of an exported ``.onnx`` or TorchScript file."""
    file = Path(path)
    if not file.is_file():
        raise NucleisamError(f"exported model {file} does not exist; write it with `nucleisam export`.")
    try:
        text = _onnx_metadata(file) if file.suffix.lower() == ".onnx" else _torchscript_metadata(file)
        metadata = json.loads(text)
    except NucleisamError:
        raise
    except Exception as exc:  # protobuf, TorchScript and JSON each raise their own errors
        raise NucleisamError(f"{file} is not a model written by `nucleisam export` ({exc}).") from exc
    if metadata.get("format") != EXPORT_FORMAT:
        raise NucleisamError(f"{file} is not a model written by `nucleisam export` (no nucleisam metadata).")
    return metadata


def _onnx_metadata(file: Path) -> str:
    onnx = _require("onnx", "reading ONNX metadata")
    props = {p.key: p.value for p in onnx.load(str(file), load_external_data=False).metadata_props}
    return props[METADATA_KEY]


def _torchscript_metadata(file: Path) -> str:
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    with _torch_jit():
        torch.jit.load(str(file), map_location="cpu", _extra_files=extra)
    return extra[TORCHSCRIPT_METADATA_FILE]


def _require(module: str, purpose: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise NucleisamError(
            f"{purpose} needs the '{module}' package: pip install 'nucleisam[export]'."
        ) from exc
