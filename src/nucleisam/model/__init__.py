"""Model: MobileSAM (kornia), checkpoint download/verification, LoRA, SAM and instance heads, adapters."""
