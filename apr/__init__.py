"""apr: Adaptive Parallel Reasoning (Pan et al. 2025, arXiv 2504.15466).

Importing `apr` is cheap: heavy backends (torch models, ray, deepspeed, wandb) load lazily.
"""

__version__ = "0.1.0"
