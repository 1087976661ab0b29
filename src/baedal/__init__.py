"""Baedal (배달, "delivery"): a message broker in Python."""

from .app import Broker
from .config import Settings

__all__ = ["Broker", "Settings", "__version__"]
__version__ = "0.1.0"
