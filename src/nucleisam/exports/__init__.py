"""Writers of segmentation results: per-image files (:mod:`~nucleisam.exports.images`: label TIFF,
QuPath GeoJSON, CSV, overlay) and slide outputs streamed chunk by chunk
(:mod:`~nucleisam.exports.slides`: Parquet, CSV, GeoJSON, OME-Zarr and OME-TIFF labels, thumbnail
overlay, tissue mask)."""

from nucleisam.exports.images import (
    EXPORT_FORMATS,
    NUCLEUS_CLASS,
    OVERLAY_MAX_SIDE,
    export_all,
    geojson_feature_collection,
    label_dtype,
    nucleus_polygons,
    output_paths,
    overlay_image,
    parse_formats,
    write_geojson,
    write_label_tiff,
    write_measurements_csv,
    write_overlay,
)

__all__ = [
    "EXPORT_FORMATS",
    "NUCLEUS_CLASS",
    "OVERLAY_MAX_SIDE",
    "export_all",
    "geojson_feature_collection",
    "label_dtype",
    "nucleus_polygons",
    "output_paths",
    "overlay_image",
    "parse_formats",
    "write_geojson",
    "write_label_tiff",
    "write_measurements_csv",
    "write_overlay",
]
