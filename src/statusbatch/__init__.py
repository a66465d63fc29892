"""statusbatch: nightly contact-governance statuses."""

__version__ = "0.1.0"
