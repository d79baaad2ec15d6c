"""nucleisam: LoRA fine-tuning of MobileSAM for nuclei instance segmentation in H&E images.

Layers, each importing only from those below it (an import-linter contract in pyproject.toml keeps
them; ARCHITECTURE.md describes each): errors → utils → config → data → metrics | morphometry →
postprocess → model → classical → train | predict → experiments | exports | evaluate → batch → cli.
"""

from nucleisam.errors import NucleisamError

__version__ = "0.1.0"

__all__ = ["NucleisamError", "__version__"]
