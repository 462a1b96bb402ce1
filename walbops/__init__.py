"""walbops: continuous block-level backup in the manner of WalB."""

__version__ = "0.1.0"
