"""Layer classes: own parameters and a cache, call ``cupyden.functional``."""

from .base import Layer, Sequential, receptive_field
from .conv import Conv2d, UpsampleConcatConv2d
from .simple import (BatchNorm2d, Concat, Dropout, Flatten, LeakyReLU, Linear, MaxPool2d,
                     ReflectionPad2d, ReLU, Upsample2d, UpsampleConcat)
from .volume import BatchNorm3d, Conv3d, MaxPool3d, ReflectionPad3d, Upsample3d

__all__ = ["Layer", "Sequential", "receptive_field", "Conv2d", "BatchNorm2d", "Concat",
           "Dropout", "Flatten", "LeakyReLU", "Linear", "MaxPool2d", "ReflectionPad2d",
           "ReLU", "Upsample2d", "UpsampleConcat", "BatchNorm3d", "Conv3d", "MaxPool3d",
           "ReflectionPad3d", "Upsample3d", "UpsampleConcatConv2d"]
