"""nucleisam: LoRA fine-tuning of MobileSAM for nuclei instance segmentation in H&E images.

The package mirrors the pipeline, each stage importable and testable on its own:
``data → model → train → postprocess → metrics → predict → io``; ``cli`` is a thin layer on top.
"""

from nucleisam.errors import NucleisamError

__version__ = "0.1.0"

__all__ = ["NucleisamError", "__version__"]
