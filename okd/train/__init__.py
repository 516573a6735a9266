"""Layer 5: the training loop (Accelerate), checkpoints and resume."""

import sys

from okd.entry import TrainPackage
from okd.train.trainer import train

# `okd.train` is both this package and, for notebooks, the function okd.train(config) (okd/api.py): importing
# a submodule (okd.train.setup) rebinds the name `okd.train` to the package, so the package is made callable
sys.modules[__name__].__class__ = TrainPackage

__all__ = ["train"]
