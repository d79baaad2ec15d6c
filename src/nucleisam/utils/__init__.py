"""Leaf utilities every layer may use: atomic file writes, CSV tables, the label-aware distance transform,
downloads into the user cache (resumable, checksum-verified)."""
