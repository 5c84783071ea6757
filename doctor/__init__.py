"""doctor: the training doctor for PyTorch."""

__version__ = "0.1.0"
