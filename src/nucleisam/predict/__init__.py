"""Inference: single images, batches and large images with tiled, seam-free stitching.

``Predictor.from_adapter(path)(image) -> labels`` is the entry point; ``predict_tiled`` runs any
map-producing function over overlapping tiles and stitches whole nuclei; ``expand_inputs`` turns
files, folders and globs into a sorted image list.
"""

from nucleisam.predict.inputs import expand_inputs
from nucleisam.predict.predictor import Prediction, Predictor
from nucleisam.predict.tiling import TileGrid, predict_tiled

__all__ = ["Prediction", "Predictor", "TileGrid", "expand_inputs", "predict_tiled"]
