"""Writing results: atomic file writes, exports (label TIFF, GeoJSON, CSV, overlays) and reports."""

from nucleisam.io.atomic import (
    atomic_output,
    ensure_output_dir,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

__all__ = [
    "atomic_output",
    "ensure_output_dir",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
