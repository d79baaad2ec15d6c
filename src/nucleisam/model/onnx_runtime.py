"""Running an exported ``.onnx`` model with ONNX Runtime: the tile-batch function of
``nucleisam predict --backend onnxruntime``.

On a CPU, ONNX Runtime (CPU execution provider, all graph optimisations) runs the exported network
faster than PyTorch eager (``benchmarks/predict.py`` measures both on the same tiles). The maps
match :func:`~nucleisam.model.inference.map_batch` within 1e-4 (tested).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from nucleisam.errors import NucleisamError
from nucleisam.model.export import EXPORT_FORMAT, METADATA_KEY


class OnnxMapFn:
    """An exported model as a tile-batch function: RGB uint8 (B, N, N, 3) → float32 maps (B, N, N).

    Args:
        path: an ``.onnx`` file written by ``nucleisam export``.
        threads: ONNX Runtime intra-op threads (``None``: its default, one per physical core).

    Attributes:
        metadata: the file's metadata document (input size, post-processing parameters, …).
        input_size: the fixed tile size ``N`` the file accepts.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise NucleisamError(
                "--backend onnxruntime needs the 'onnxruntime' package: pip install 'nucleisam[export]'."
            ) from exc
        file = Path(path)
        if not file.is_file():
            raise NucleisamError(
                f"model file {file} (--model) does not exist; write it with `nucleisam export`."
            )
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ONNX Runtime raises its own exception types for unreadable files
            raise NucleisamError(f"cannot load {file} with ONNX Runtime ({exc}).") from exc
        self.metadata = _metadata(self.session, file)
        self.input_size = int(self.metadata["input_size"])
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.source = file

    def __call__(self, tiles: np.ndarray) -> dict[str, np.ndarray]:
        if tiles.shape[1:3] != (self.input_size, self.input_size):
            raise NucleisamError(
                f"{self.source} takes {self.input_size}×{self.input_size} tiles, got "
                f"{tiles.shape[1]}×{tiles.shape[2]}; use --tile {self.input_size}."
            )
        batch = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2), dtype=np.float32)
        outputs = self.session.run(self.output_names, {self.session.get_inputs()[0].name: batch})
        return {name: value[:, 0] for name, value in zip(self.output_names, outputs, strict=True)}


def _metadata(session: Any, file: Path) -> dict[str, Any]:
    props = session.get_modelmeta().custom_metadata_map
    try:
        metadata = json.loads(props[METADATA_KEY])
    except (KeyError, ValueError) as exc:
        raise NucleisamError(f"{file} is an ONNX model but not one written by `nucleisam export`.") from exc
    if metadata.get("format") != EXPORT_FORMAT:
        raise NucleisamError(f"{file} is an ONNX model but not one written by `nucleisam export`.")
    return metadata
