"""ftdsl: a declarative pipeline language and compiler for fine-tuning PyTorch models."""

__version__ = "0.1.0"
