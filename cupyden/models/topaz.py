"""Topaz-Denoise's 2-D networks in cupyden's engine, to run its pretrained weights.

Topology of Topaz-Denoise 0.3.20 (Bepler, Kelley, Noble & Berger 2020, Nat. Commun. 11:
5208; ``topaz/denoising/models.py``), re-expressed with cupyden's layers; the weights are
Topaz's, read from its ``.sav`` files without PyTorch (``cupyden.io.torch_pickle``).

UDenoiseNet (``unet``, ``unet-v0.2.1``; ``unet-small`` with depth 3), nf = 48 channels,
every convolution followed by LeakyReLU(0.1) except the last:

    enc1       Conv(1->nf, base_width), MaxPool 2
    enc2..enc{d}  Conv(nf->nf, 3), MaxPool 2
    enc{d+1}   Conv(nf->nf, 3)
    dec{d}     nearest upsampling to p{d-1}'s size, concat p{d-1}: Conv(2nf->2nf), Conv(2nf->2nf)
    dec{i}     (i = d-1 .. 2) upsample to p{i-1}'s size, concat p{i-1}: Conv(3nf->2nf), Conv(2nf->2nf)
    dec1       upsample to the input's size, concat the input: Conv(2nf+1->64, top_width),
               Conv(64->32, top_width), Conv(32->1, top_width)

dec1's upsampling, concatenation and first convolution are one layer,
``UpsampleConcatConv2d`` (named ``dec1.0`` like the convolution it holds): when the input
is exactly twice p1's size (always with ``pad=True``) it runs as a convolution at p1's
resolution of [p1, the input's 2x2 phases as channels] (``functional.phase_conv``,
exact), so the (N, 2nf + 1, H, W) concatenation is never written.

p{i} is enc{i}'s pooled output. Pooling floors odd sizes and the upsampling maps output
index i to floor(i * n_in / n_out) (PyTorch's 'nearest' to a given size), so for sides
that are not multiples of 2^d the coarse features shift by up to one coarse pixel, as in
Topaz itself. With ``pad=True`` (cupyden's default for tiling) the input is first
reflection-padded at the bottom and right to a multiple of 2^d and the output cropped: then
every level halves and doubles exactly, tiles aligned to 2^d equal the whole image, and
the result equals Topaz's exactly when the sides are multiples of 2^d (4096, 2048, ...).
``pad=False`` reproduces Topaz for any size.

DenoiseNet2 (``fcnn``): Conv(1->64, 11), Conv(64->64, 11), Conv(64->1, 11), LeakyReLU(0.1)
after the first two.

Parameter names follow Topaz's state dict with ``weight``/``bias`` renamed ``w``/``b``
(``dec5.0.weight`` -> ``dec5.0.w``).
"""

import numpy

from ..backend import get_array_module
from ..functional.shape import (add_gradients, reflection_pad2d_backward,
                                reflection_pad2d_forward)
from ..layers import Conv2d, MaxPool2d, Sequential, UpsampleConcat, UpsampleConcatConv2d
from .base import Model

#: Topaz's pretrained 2-D models: alias -> (file in topaz/pretrained/denoise, config).
PRETRAINED = {
    "unet": ("unet_L2_v0.2.2.sav", {"arch": "topaz-unet", "base_width": 11, "top_width": 5}),
    "unet-v0.2.1": ("unet_L2_v0.2.1.sav", {"arch": "topaz-unet", "base_width": 7,
                                           "top_width": 3}),
    "unet-small": ("unet_small_L1_v0.2.2.sav", {"arch": "topaz-unet", "base_width": 11,
                                                "top_width": 5, "depth": 3}),
    "fcnn": ("fcnn_L1_v0.2.2.sav", {"arch": "topaz-fcnn"}),
}

SLOPE = 0.1


def _conv(cin, cout, k, rng, last=False):
    return Conv2d(cin, cout, k, activation=None if last else "leaky_relu", slope=SLOPE, rng=rng)


class TopazUNet(Model):
    """Topaz-Denoise's UDenoiseNet (depth 5) and UDenoiseNetSmall (depth 3).

    Parameters
    ----------
    nf : int
        Channels (48).
    base_width : int
        Kernel of the first convolution (11; 7 in v0.2.1).
    top_width : int
        Kernel of the last three convolutions (5; 3 in v0.2.1).
    depth : int
        Poolings (5 for ``unet``, 3 for ``unet-small``).
    pad : bool
        Reflection-pad to a multiple of 2^depth (module docstring).
    seed : int
        Seed of the initial weights (before Topaz's are loaded, or for training).

    Input and output: (N, 1, H, W), H, W >= 2^depth.
    """

    arch = "topaz-unet"

    def __init__(self, nf=48, base_width=11, top_width=5, depth=5, pad=True, seed=0):
        self.nf, self.base_width, self.top_width = nf, base_width, top_width
        self.depth, self.pad, self.seed = depth, pad, seed
        self.multiple = 2 ** depth
        rng = numpy.random.default_rng(seed)
        d = depth
        self.enc = [Sequential([("0", _conv(1, nf, base_width, rng))])]
        self.enc += [Sequential([("0", _conv(nf, nf, 3, rng))]) for _ in range(d)]
        self.pools = [MaxPool2d(2) for _ in range(d)]
        self.ups = {i: UpsampleConcat() for i in range(2, d + 1)}   # upsample + concat
        self.dec = {}
        for i in range(d, 1, -1):
            cin = 2 * nf if i == d else 3 * nf
            self.dec[i] = Sequential([("0", _conv(cin, 2 * nf, 3, rng)),
                                      ("2", _conv(2 * nf, 2 * nf, 3, rng))])
        # dec1.0 reads [upsample(h), x] itself (forward(h, x)); dec1.2 and dec1.4 follow
        self.top = UpsampleConcatConv2d(2 * nf + 1, 64, top_width, activation="leaky_relu",
                                        slope=SLOPE, rng=rng)
        self.dec[1] = Sequential([("0", self.top), ("2", _conv(64, 32, top_width, rng)),
                                  ("4", _conv(32, 1, top_width, rng, last=True))])
        self.top_rest = Sequential(self.dec[1].named[1:])
        self.named = []
        for i in range(d):
            self.named += [("enc%d" % (i + 1), self.enc[i]), ("pool%d" % (i + 1), self.pools[i])]
        self.named.append(("enc%d" % (d + 1), self.enc[d]))
        for i in range(d, 1, -1):
            self.named += [("up%d" % i, self.ups[i]), ("dec%d" % i, self.dec[i])]
        self.named.append(("dec1", self.dec[1]))          # up1 is inside dec1.0

    def forward(self, x):
        """x (N, 1, H, W) -> (N, 1, H, W)."""
        H, W = x.shape[2:]
        if self.pad:
            m = self.multiple
            x, self._pad_cache = reflection_pad2d_forward(x, (0, -H % m, 0, -W % m))
        skips = [x]                                      # p0 = the input, p1 .. p{d-1}
        h = x
        for i in range(self.depth):
            h = self.pools[i].forward(self.enc[i].forward(h))
            skips.append(h)
        h = self.enc[self.depth].forward(h)
        for i in range(self.depth, 1, -1):
            skip = skips[i - 1]
            h = self.dec[i].forward(self.ups[i].forward(h, skip))   # [upsample(h), skip]
        h = self.top_rest.forward(self.top.forward(h, x))          # dec1 on [upsample(h), x]
        return h[:, :, :H, :W] if self.pad else h

    def backward(self, dy):
        """The forward pass in reverse; each pooled output's gradient sums its two uses."""
        xp = get_array_module(dy)
        if self.pad:
            N, C, H, W = dy.shape
            _, bottom, _, right = self._pad_cache.pads
            full = xp.zeros((N, C, H + bottom, W + right), dy.dtype)
            full[:, :, :H, :W] = dy
            dy = full
        dskips = [None] * self.depth
        # dec1.0 reads the input x too: dskips[0], None during backward_params
        dh, dskips[0] = self.top.backward(self.top_rest.backward(dy))
        for i in range(2, self.depth + 1):
            dh, dskips[i - 1] = self.ups[i].backward(self.dec[i].backward(dh))
        dh = self.enc[self.depth].backward(dh)           # h_d feeds only the bottleneck
        for i in range(self.depth - 1, 0, -1):           # h_{i+1} = pool(enc_i(h_i)), and
            dh = add_gradients(self.enc[i].backward(self.pools[i].backward(dh)),
                               dskips[i])                # h_i is a skip
        dx = self.enc[0].backward(self.pools[0].backward(dh))   # None from backward_params
        if dx is None:
            return None
        dx = add_gradients(dx, dskips[0])                # the input is dec1's skip too
        return reflection_pad2d_backward(dx, self._pad_cache) if self.pad else dx

    def input_layers(self):
        return [self.enc[0].named[0][1], self.top]       # enc1.0 and dec1.0 read the input

    def config(self):
        return {"arch": self.arch, "nf": self.nf, "base_width": self.base_width,
                "top_width": self.top_width, "depth": self.depth, "pad": self.pad,
                "seed": self.seed}


class TopazFCNN(Model):
    """Topaz-Denoise's DenoiseNet2 (``fcnn``): three 11x11 convolutions, 64 channels."""

    arch = "topaz-fcnn"

    def __init__(self, nf=64, width=11, seed=0):
        self.nf, self.width, self.seed = nf, width, seed
        rng = numpy.random.default_rng(seed)
        self.net = Sequential([("0", _conv(1, nf, width, rng)), ("2", _conv(nf, nf, width, rng)),
                               ("4", _conv(nf, 1, width, rng, last=True))])
        self.named = [("net", self.net)]

    def forward(self, x):
        return self.net.forward(x)

    def backward(self, dy):
        return self.net.backward(dy)

    def config(self):
        return {"arch": self.arch, "nf": self.nf, "width": self.width, "seed": self.seed}


def from_topaz_state(state):
    """Topaz's state dict names -> cupyden's (``weight``/``bias`` -> ``w``/``b``).

    Parameters
    ----------
    state : dict of name -> array

    Returns
    -------
    dict
    """
    out = {}
    for k, v in state.items():
        stem, _, leaf = k.rpartition(".")
        out["%s.%s" % (stem, {"weight": "w", "bias": "b"}.get(leaf, leaf))] = v
    return out
