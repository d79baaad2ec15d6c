"""Inference: single images, batches and large images with tiled, seam-free stitching."""
