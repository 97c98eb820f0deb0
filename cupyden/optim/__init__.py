"""Parameters in one flat buffer, and Adam over it."""

from .adam import Adam
from .params import Parameters

__all__ = ["Adam", "Parameters"]
