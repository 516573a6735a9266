"""okd: Online Knowledge Distillation (arXiv 2409.12512) and the KD baselines it compares."""

__version__ = "0.1.0"
