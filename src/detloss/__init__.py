"""detloss: object-detection losses with explicit normalization."""

__version__ = "0.1.0"
