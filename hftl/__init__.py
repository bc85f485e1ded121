"""hftl: transfer learning with Hugging Face checkpoints, driven by validated YAML recipes."""
__version__ = "0.1.0"
