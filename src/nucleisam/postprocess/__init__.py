"""Post-processing: marker-controlled watershed instance extraction and parameter tuning."""
