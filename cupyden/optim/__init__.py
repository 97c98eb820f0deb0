"""Parameters in one flat buffer, Adam over it, and the weights' moving average."""

from .adam import Adam
from .ema import WeightAverage
from .params import Parameters

__all__ = ["Adam", "Parameters", "WeightAverage"]
