"""CyxWiz Model Marketplace."""

__version__ = "0.1.0"
