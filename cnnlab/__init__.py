"""cnnlab: learn to build and train convolutional networks in JAX, one YAML file per rep.

The Python API (see cnnlab.api) is importable from here; it loads JAX only when first used,
so `import cnnlab` and the command line stay quick.
"""

__version__ = "0.1.0"

API = (
    "Run",
    "load_experiment",
    "train",
    "resume",
    "open_run",
    "overfit",
    "evaluate",
    "predict",
    "sweep",
)
__all__ = list(API)


def __getattr__(name: str):
    if name in API:
        from cnnlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
