"""Data layer: readers (NuInsSeg, folders, XML, whole slides), folds, transforms, augmentation,
training targets."""

from nucleisam.config import NUINSSEG_MPP
from nucleisam.data.aperio_xml import rasterize_polygons, read_xml_instances, read_xml_polygons
from nucleisam.data.datasets import (
    Dataset,
    Sample,
    is_nuinsseg_root,
    load_folders,
    load_nuinsseg,
    open_dataset,
    parse_organ_folder,
)
from nucleisam.data.folds import Fold, FoldManifest, make_folds
from nucleisam.data.imageio import IMAGE_SUFFIXES, probe_image, read_rgb, to_rgb_uint8
from nucleisam.data.labels import (
    LABEL_SUFFIXES,
    count_instances,
    label_map_from_array,
    read_binary_mask,
    read_label_map,
)
from nucleisam.data.resolution import DataResolution, resolve_data_mpp
from nucleisam.data.slides import (
    ArraySlide,
    SlideImage,
    open_image,
    recorded_mpp,
    working_level,
)
from nucleisam.data.summary import DatasetSummary, summarize
from nucleisam.data.targets import instance_targets
from nucleisam.data.tissue import (
    TissueMask,
    detect_tissue,
    read_tissue_mask,
    tile_has_tissue,
    tissue_mask_for,
    tissue_mask_from_option,
)
from nucleisam.data.transforms import (
    Augmented,
    Augmenter,
    from_model_output,
    longest_side_shape,
    resize_image,
    resize_map,
    resize_nearest,
    to_model_input,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "NUINSSEG_MPP",
    "ArraySlide",
    "Augmented",
    "Augmenter",
    "DataResolution",
    "Dataset",
    "DatasetSummary",
    "Fold",
    "FoldManifest",
    "Sample",
    "SlideImage",
    "TissueMask",
    "count_instances",
    "detect_tissue",
    "from_model_output",
    "instance_targets",
    "is_nuinsseg_root",
    "label_map_from_array",
    "load_folders",
    "load_nuinsseg",
    "longest_side_shape",
    "make_folds",
    "open_dataset",
    "open_image",
    "parse_organ_folder",
    "probe_image",
    "rasterize_polygons",
    "read_binary_mask",
    "read_label_map",
    "read_rgb",
    "read_tissue_mask",
    "read_xml_instances",
    "read_xml_polygons",
    "recorded_mpp",
    "resize_image",
    "resize_map",
    "resize_nearest",
    "resolve_data_mpp",
    "summarize",
    "tile_has_tissue",
    "tissue_mask_for",
    "tissue_mask_from_option",
    "to_model_input",
    "to_rgb_uint8",
    "working_level",
]
