"""okd: Online Knowledge Distillation (arXiv 2409.12512) and the KD baselines it compares.

The Python API (okd/api.py): `from okd import train, evaluate, load_config`; mistakes are `OkdError`.
The names load on first use, so `import okd` stays light (no torch).
"""

from okd.errors import OkdError

__version__ = "0.1.0"
__all__ = ["OkdError", "evaluate", "load_config", "train"]

_API = ("train", "evaluate", "load_config")


def __getattr__(name: str):
    # `okd.train` is also the training package: once it is imported, the package itself (made callable by
    # okd/train/__init__.py) answers instead of this function
    if name in _API:
        import importlib

        return getattr(importlib.import_module("okd.api"), name)
    raise AttributeError(f"module 'okd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
