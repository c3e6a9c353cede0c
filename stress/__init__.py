"""phantom-stress: synthetic-phantom stress testing and regulatory evidence for imaging AI models."""

__version__ = "0.1.0"
