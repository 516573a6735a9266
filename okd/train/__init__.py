"""Layer 5: the training loop (Accelerate), checkpoints and resume."""

from okd.train.trainer import train

__all__ = ["train"]
