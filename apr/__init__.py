"""apr: Adaptive Parallel Reasoning (Pan et al. 2025, arXiv 2504.15466).

Importing `apr` is cheap: heavy backends (torch models, ray, deepspeed, wandb) load lazily.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `from apr import Reasoner` loads the runtime and task modules only when asked for.
    if name == "Reasoner":
        from apr.api import Reasoner

        return Reasoner
    raise AttributeError(f"module 'apr' has no attribute {name!r}")


__all__ = ["Reasoner", "__version__"]
