"""The seed's U-Net (Ronneberger et al. 2015), two 3x3 conv + ReLU per level.

    enc1  Conv(C->32)+ReLU, Conv(32->32)+ReLU                 H
    enc2  MaxPool 2, Conv(32->64)+ReLU, Conv(64->64)+ReLU     H/2
    enc3  MaxPool 2, Conv(64->128)+ReLU, Conv(128->128)+ReLU  H/4
    bott  MaxPool 2, Conv(128->256)+ReLU, Conv(256->256)+ReLU H/8
    dec3  Upsample to enc3's size, concat enc3 (256+128), Conv(384->128)+ReLU, Conv(128->128)+ReLU
    dec2  Upsample, concat enc2 (128+64), Conv(192->64)+ReLU, Conv(64->64)+ReLU
    dec1  Upsample, concat enc1 (64+32), Conv(96->32)+ReLU, Conv(32->32)+ReLU
    out   Conv(32->C, 1x1)

Each upsampling and its concatenation are one op (``layers.UpsampleConcat``): on the GPU
one kernel writes the decoder's channels-last input, which cuDNN reads without a copy.

Sizes that are not multiples of 8: the input is reflection-padded at the bottom and right
to the next multiple of 8 (so every pooling halves exactly and every upsampling doubles
exactly), and the output is cropped back to H x W. A tile of a larger image that starts
at a multiple of 8 therefore sees the same pooling grid as the whole image, which is what
lets tiled inference equal untiled inference. Smallest input: 2 x 2 (reflection needs
the pad to be smaller than the size).
"""

import numpy

from ..backend import get_array_module
from ..functional.shape import (add_gradients, reflection_pad2d_backward,
                                reflection_pad2d_forward)
from ..layers import Conv2d, MaxPool2d, Sequential, UpsampleConcat
from .base import Model


class UNet(Model):
    """U-Net denoiser.

    Parameters
    ----------
    base : int
        Channels at the first level (32); doubled at each level down.
    channels : int
        Image channels.
    seed : int
        Seed of the initial weights.

    Input and output: (N, channels, H, W), any H, W >= 2.
    """

    arch = "unet"
    multiple = 8

    def __init__(self, base=32, channels=1, seed=0):
        self.base, self.channels, self.seed = base, channels, seed
        rng = numpy.random.default_rng(seed)
        c1, c2, c3, c4 = base, 2 * base, 4 * base, 8 * base

        def block(cin, cout):
            return Sequential([("conv1", Conv2d(cin, cout, 3, activation="relu", rng=rng)),
                               ("conv2", Conv2d(cout, cout, 3, activation="relu", rng=rng))])

        self.enc1, self.pool1 = block(channels, c1), MaxPool2d(2)
        self.enc2, self.pool2 = block(c1, c2), MaxPool2d(2)
        self.enc3, self.pool3 = block(c2, c3), MaxPool2d(2)
        self.bott = block(c3, c4)
        self.up3, self.dec3 = UpsampleConcat(), block(c4 + c3, c3)
        self.up2, self.dec2 = UpsampleConcat(), block(c3 + c2, c2)
        self.up1, self.dec1 = UpsampleConcat(), block(c2 + c1, c1)
        self.out = Conv2d(c1, channels, 1, rng=rng)
        self.named = [("enc1", self.enc1), ("pool1", self.pool1), ("enc2", self.enc2),
                      ("pool2", self.pool2), ("enc3", self.enc3), ("pool3", self.pool3),
                      ("bott", self.bott), ("up3", self.up3), ("dec3", self.dec3),
                      ("up2", self.up2), ("dec2", self.dec2), ("up1", self.up1),
                      ("dec1", self.dec1), ("out", self.out)]

    def forward(self, x):
        """x (N, C, H, W) -> (N, C, H, W)."""
        H, W = x.shape[2:]
        m = self.multiple
        pads = (0, -H % m, 0, -W % m)                       # bottom and right only
        x, self._pad_cache = reflection_pad2d_forward(x, pads)
        e1 = self.enc1.forward(x)                           # (N, c1, H, W)
        e2 = self.enc2.forward(self.pool1.forward(e1))      # (N, c2, H/2, W/2)
        e3 = self.enc3.forward(self.pool2.forward(e2))      # (N, c3, H/4, W/4)
        b = self.bott.forward(self.pool3.forward(e3))       # (N, c4, H/8, W/8)
        d3 = self.dec3.forward(self.up3.forward(b, e3))    # [upsample(b), e3]
        d2 = self.dec2.forward(self.up2.forward(d3, e2))
        d1 = self.dec1.forward(self.up1.forward(d2, e1))
        y = self.out.forward(d1)
        return y[:, :, :H, :W]

    def backward(self, dy):
        """The forward pass in reverse; each skip's gradient is the sum of its two uses."""
        xp = get_array_module(dy)
        N, C, H, W = dy.shape
        _, bottom, _, right = self._pad_cache.pads
        dypad = xp.zeros((N, C, H + bottom, W + right), dy.dtype)
        dypad[:, :, :H, :W] = dy                            # gradient of the crop
        dd1 = self.out.backward(dypad)
        dd2, de1 = self.up1.backward(self.dec1.backward(dd1))     # (d2, enc1 skip)
        dd3, de2 = self.up2.backward(self.dec2.backward(dd2))
        db, de3 = self.up3.backward(self.dec3.backward(dd3))
        de3 = add_gradients(self.pool3.backward(self.bott.backward(db)), de3)
        de2 = add_gradients(self.pool2.backward(self.enc3.backward(de3)), de2)
        de1 = add_gradients(self.pool1.backward(self.enc2.backward(de2)), de1)
        dx = self.enc1.backward(de1)                        # None from backward_params
        return None if dx is None else reflection_pad2d_backward(dx, self._pad_cache)

    def input_layers(self):
        return [self.enc1.named[0][1]]

    def config(self):
        return {"arch": self.arch, "base": self.base, "channels": self.channels,
                "seed": self.seed}
