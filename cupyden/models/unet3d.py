"""3-D U-Nets for tomograms: F2Fd's U-Net with dropout (3-D, or 2-D for single micrographs),
and a cryoCARE-like U-Net for Noise2Noise on even/odd tomograms (:class:`UNet3d`).

F2FdUNet
--------

The network of F2Fd (Fourier Perturbations for Denoising Cryo-Electron Tomograms; code at
github.com/Fickincool/F2Fd, ``model.py``), itself Self2Self's U-Net (Quan, Chen, Pang &
Ji 2020, CVPR) without partial convolutions, written with cupyden's layers. nf = 48
features, LeakyReLU(0.1), depth d = 5 poolings, every convolution 3 x 3 (x 3):

    enc0       Conv(1->nf)                               (no activation, as in F2Fd)
    enc1..d    Conv(nf->nf)+LReLU, MaxPool 2             1/2 .. 1/2^d (enc{i} after pooling)
    bottom     Conv(nf->nf)+LReLU                        1/2^d
    dec{d}     upsample, concat enc{d-1}'s output:       Dropout, Conv(2nf->2nf)+LReLU,
                                                         Dropout, Conv(2nf->2nf)+LReLU
    dec{i}     (i = d-1 .. 2) upsample, concat enc{i-1}'s output (nf): Dropout,
               Conv(3nf->2nf)+LReLU, Dropout, Conv(2nf->2nf)+LReLU
    dec1       upsample, concat the input: Dropout, Conv(2nf+1->64)+LReLU, Dropout,
               Conv(64->32)+LReLU, Dropout, Conv(32->1)

enc0's output feeds only enc1; the input itself is dec1's skip. Dropout, with probability
``dropout_p``, stays on at inference when F2Fd averages T passes (``cupyden.f2fd``); that
is what ``mc_dropout`` switches on. F2Fd uses partial convolutions in the encoder, which
without a mask only rescale the border; plain zero-padded convolutions are used here.

Sides must be multiples of 2^d (32): the patches and tiles of ``cupyden.f2fd`` are.
"""

import numpy

from ..backend import get_array_module
from ..functional.shape import add_gradients
from ..functional.volume import reflection_pad3d_backward, reflection_pad3d_forward
from ..layers import (Conv2d, Conv3d, Dropout, MaxPool2d, MaxPool3d, Sequential,
                      UpsampleConcat)
from .base import Model

SLOPE = 0.1


class F2FdUNet(Model):
    """F2Fd's dropout U-Net (module docstring).

    Parameters
    ----------
    ndim : int
        3 for tomograms (N, 1, D, H, W), 2 for micrographs (N, 1, H, W).
    nf : int
        Features (48).
    depth : int
        Poolings (5); sides must be multiples of 2^depth.
    dropout_p : float
        Drop probability of the decoder's dropout layers (F2Fd's ``dropout_p``).
    seed : int
        Seed of the initial weights and of the dropout masks.

    Weights and biases start uniform in +-1/sqrt(fan_in), PyTorch's default (kaiming_uniform
    with a = sqrt(5)) that F2Fd's network had: He's normal initialisation, with the skip
    concatenations and the dropout's 1/(1 - p), gave outputs of standard deviation 9 for
    unit inputs and a diverging first step.
    """

    arch = "f2fd-unet"

    def __init__(self, ndim=3, nf=48, depth=5, dropout_p=0.3, seed=0):
        if ndim not in (2, 3):
            raise ValueError("ndim must be 2 or 3, got %r" % ndim)
        self.ndim, self.nf, self.depth, self.dropout_p, self.seed = ndim, nf, depth, dropout_p, seed
        self.multiple = 2 ** depth
        rng = numpy.random.default_rng(seed)
        Conv = Conv3d if ndim == 3 else Conv2d
        Pool = MaxPool3d if ndim == 3 else MaxPool2d
        drops = iter(range(1000))

        def conv(cin, cout, act=True):
            return Conv(cin, cout, 3, activation="leaky_relu" if act else None, slope=SLOPE,
                        rng=rng)

        def drop():
            return Dropout(dropout_p, seed=seed * 1000 + next(drops))

        self.enc = [Sequential([("conv", conv(1, nf, act=False))])]
        self.enc += [Sequential([("conv", conv(nf, nf)), ("pool", Pool(2))]) for _ in range(depth)]
        self.bottom = Sequential([("conv", conv(nf, nf))])
        self.ups = [UpsampleConcat() for _ in range(depth)]     # upsample + concat, one op
        self.dec = {}
        for i in range(depth, 1, -1):
            cin = 2 * nf if i == depth else 3 * nf
            self.dec[i] = Sequential([("drop1", drop()), ("conv1", conv(cin, 2 * nf)),
                                      ("drop2", drop()), ("conv2", conv(2 * nf, 2 * nf))])
        top = (2 * nf if depth > 1 else nf) + 1        # dec2's output (or the bottom's) + input
        self.dec[1] = Sequential([("drop1", drop()), ("conv1", conv(top, 64)),
                                  ("drop2", drop()), ("conv2", conv(64, 32)),
                                  ("drop3", drop()), ("conv3", conv(32, 1, act=False))])
        self.named = [("enc%d" % i, e) for i, e in enumerate(self.enc)] + [("bottom", self.bottom)]
        for i in range(depth, 0, -1):
            self.named += [("up%d" % i, self.ups[i - 1]), ("dec%d" % i, self.dec[i])]
        for _, layer in self.named_layers():          # PyTorch's default initialisation
            if isinstance(layer, Conv):
                bound = 1 / numpy.sqrt(layer.params["w"][0].size)     # 1 / sqrt(fan_in)
                for k, v in layer.params.items():
                    v[...] = rng.uniform(-bound, bound, v.shape)

    def mc_dropout(self):
        """Inference with dropout on (F2Fd's T stochastic passes): evaluation mode, no
        caches, but the Dropout layers drop."""
        self.eval()
        for _, layer in self.named_layers():
            if isinstance(layer, Dropout):
                layer.training = True
        return self

    def forward(self, x):
        """x (N, 1, *S) -> (N, 1, *S), every side of S a multiple of 2^depth.

        Raises
        ------
        ValueError
            When a side is not a multiple of 2^depth.
        """
        if any(n % self.multiple for n in x.shape[2:]):
            raise ValueError("F2FdUNet needs sides that are multiples of %d, got %s"
                             % (self.multiple, tuple(x.shape[2:])))
        feats = [x]                                     # x, then enc1 .. enc{d} outputs
        h = self.enc[0].forward(x)
        for i in range(1, self.depth + 1):
            h = self.enc[i].forward(h)
            feats.append(h)
        h = self.bottom.forward(h)
        for i in range(self.depth, 0, -1):              # dec{i} concatenates feats[i - 1]
            skip = feats[i - 1]
            h = self.dec[i].forward(self.ups[i - 1].forward(h, skip))   # [upsample(h), skip]
        return h

    def backward(self, dy):
        """The forward pass in reverse; each encoder output's gradient sums its two uses
        (the next encoder level and the skip)."""
        dfeats = [None] * self.depth
        dh = dy
        for i in range(1, self.depth + 1):
            dh, dfeats[i - 1] = self.ups[i - 1].backward(self.dec[i].backward(dh))
        dh = self.bottom.backward(dh)                   # enc{d}'s output feeds only the bottom
        for i in range(self.depth, 0, -1):
            dh = self.enc[i].backward(dh)               # gradient of enc{i-1}'s output,
            if i > 1:                                   # which is also dec{i}'s skip
                dh = add_gradients(dh, dfeats[i - 1])
        return add_gradients(self.enc[0].backward(dh), dfeats[0])   # the input: dec1's skip

    def config(self):
        return {"arch": self.arch, "ndim": self.ndim, "nf": self.nf, "depth": self.depth,
                "dropout_p": self.dropout_p, "seed": self.seed}


class UNet3d(Model):
    """A cryoCARE-like 3-D U-Net for Noise2Noise on even/odd tomograms.

    The network of cryoCARE (Buchholz, Jordan, Pigino & Jug 2019, ISBI; its defaults
    unet_n_depth 3, unet_n_first 16, unet_kern_size 3), which is CSBDeep's CARE U-Net
    (Weigert et al. 2018, Nature Methods): two 3 x 3 x 3 convolutions + ReLU per level,
    channels doubled at each level down, max pooling 2, nearest upsampling concatenated
    with the skip, a 1 x 1 x 1 output convolution, and the input added to the output
    (residual):

        enc{i}   (i = 0 .. depth-1) Conv(c_{i-1} -> c_i)+ReLU, Conv(c_i -> c_i)+ReLU,
                 then MaxPool 2                                  c_i = base 2^i, 1/2^i
        bott     Conv(c_{d-1} -> c_d)+ReLU, Conv(c_d -> c_d)+ReLU          1/2^d
        dec{i}   (i = depth-1 .. 0) upsample, concat enc{i}'s output:
                 Conv(c_{i+1} + c_i -> c_i)+ReLU, Conv(c_i -> c_i)+ReLU
        out      Conv(base -> 1, 1 x 1 x 1);  y = x + out

    Chosen over F2Fd's U-Net without dropout by the receptive field it puts into every
    tile's halo and by a CPU step (benchmarks/RESULTS.md, issue 18): depth 3 and base 16
    see 96 voxels (halo 48), F2Fd's depth 5 and 48 features 286 (halo 160 after rounding
    to its 32-voxel grid), so a 512 x 1024 x 1024 tomogram in tiles of a 24 GB budget
    would process ~2.6x its voxels with this network and over 10x with F2Fd's.

    Sides that are not multiples of 2^depth: the input is reflection-padded at the far
    end of each axis (``functional.volume.reflection_pad3d_forward``) and the output
    cropped back, as the 2-D U-Net does, so a tile that starts at a multiple of 2^depth
    sees the same pooling grid as the whole volume (tiled == untiled). Sides must be at
    least 2^depth.

    Parameters
    ----------
    base : int
        Channels at the first level (16).
    depth : int
        Poolings (3).
    seed : int
        Seed of the initial weights (He normal, ``layers.Conv3d``).

    Input and output: (N, 1, D, H, W).
    """

    arch = "unet3d"
    ndim = 3

    def __init__(self, base=16, depth=3, seed=0):
        if depth < 1:
            raise ValueError("depth must be at least 1, got %r" % depth)
        self.base, self.depth, self.seed = base, depth, seed
        self.multiple = 2 ** depth
        rng = numpy.random.default_rng(seed)
        c = [base * 2 ** i for i in range(depth + 1)]

        def block(cin, cout):
            return Sequential([("conv1", Conv3d(cin, cout, 3, activation="relu", rng=rng)),
                               ("conv2", Conv3d(cout, cout, 3, activation="relu", rng=rng))])

        self.enc = [block(1 if i == 0 else c[i - 1], c[i]) for i in range(depth)]
        self.pools = [MaxPool3d(2) for _ in range(depth)]
        self.bott = block(c[depth - 1], c[depth])
        self.ups = [UpsampleConcat() for _ in range(depth)]
        self.dec = [block(c[i + 1] + c[i], c[i]) for i in range(depth)]
        self.out = Conv3d(base, 1, 1, rng=rng)
        self.named = []
        for i in range(depth):
            self.named += [("enc%d" % i, self.enc[i]), ("pool%d" % i, self.pools[i])]
        self.named.append(("bott", self.bott))
        for i in range(depth - 1, -1, -1):
            self.named += [("up%d" % i, self.ups[i]), ("dec%d" % i, self.dec[i])]
        self.named.append(("out", self.out))

    def forward(self, x):
        """x (N, 1, D, H, W) -> (N, 1, D, H, W), every side at least 2^depth.

        Raises
        ------
        ValueError
            A side smaller than 2^depth.
        """
        m = self.multiple
        sizes = x.shape[2:]
        if min(sizes) < m:
            raise ValueError("UNet3d needs sides of at least %d voxels, got %s" % (m, sizes))
        h, self._pad = reflection_pad3d_forward(x, tuple((0, -n % m) for n in sizes))
        skips = []
        for i in range(self.depth):                          # (N, c_i, S / 2^i)
            h = self.enc[i].forward(h)
            skips.append(h)
            h = self.pools[i].forward(h)
        h = self.bott.forward(h)                              # (N, c_d, S / 2^d)
        for i in range(self.depth - 1, -1, -1):               # [upsample(h), enc{i}]
            h = self.dec[i].forward(self.ups[i].forward(h, skips[i]))
        y = self.out.forward(h)                               # (N, 1, padded S)
        D, H, W = sizes
        return y[:, :, :D, :H, :W] + x                        # crop; residual

    def backward(self, dy):
        """The forward pass in reverse: the crop's gradient is dy zero-padded, each skip's
        gradient sums its two uses, and the residual adds dy to the input's gradient."""
        xp = get_array_module(dy)
        N, C, D, H, W = dy.shape
        dpad = xp.zeros((N, C) + tuple(n + p for n, (_, p) in zip((D, H, W), self._pad.pads)),
                        dy.dtype)
        dpad[:, :, :D, :H, :W] = dy                           # gradient of the crop
        dh = self.out.backward(dpad)
        dskips = [None] * self.depth
        for i in range(self.depth):                           # dec0 first: reverse order
            dh, dskips[i] = self.ups[i].backward(self.dec[i].backward(dh))
        dh = self.bott.backward(dh)
        for i in range(self.depth - 1, -1, -1):
            dh = add_gradients(self.pools[i].backward(dh), dskips[i])
            dh = self.enc[i].backward(dh)
        return reflection_pad3d_backward(dh, self._pad) + dy  # + the residual's dy

    def config(self):
        return {"arch": self.arch, "base": self.base, "depth": self.depth, "seed": self.seed}
