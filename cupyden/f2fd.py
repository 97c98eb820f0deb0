"""F2Fd: self-supervised denoising of one tomogram (or one micrograph) by Fourier perturbation.

After F2Fd (Fourier Perturbations for Denoising Cryo-Electron Tomograms and Comparison to
Established Approaches; code at github.com/Fickincool/F2Fd, ``dataloader.py``,
``singleCET_FourierDataset``). When there is no second noisy view (a reconstructed
tomogram without its tilt series, a single exposure without frames), training pairs are
made from the one image x in Fourier space:

1. X = FFT(x) (real-to-complex, over every axis), after clipping x to its 0.05% and 99.95%
   quantiles and standardising it (mean 0, standard deviation 1), as F2Fd does.
2. A Fourier sample is x_m = IFFT(M_m X) with a random mask M_m of values -1, 0, +1:

       M = min(S + V, 1) * (1 - 2 B)

   S: a low-frequency sphere (disc in 2-D) always kept; its radius is drawn so that it
      covers a fraction of Fourier space uniform in ``sphere_fraction`` (F2Fd: 5-10%),
      |k| < (3 f / 4 pi)^(1/3) cycles/voxel in 3-D, (f / pi)^(1/2) in 2-D;
   V: blocks of ``volumetric_scale_factor`` Fourier voxels per side, each dropped with
      probability ``Vmask_pct`` (F2Fd's volumetric mask);
   B: Bernoulli(``p``) per Fourier voxel: where 1 the coefficient's sign is inverted
      (F2Fd's pointwise "inversion" mask).
3. The pool is ``total_samples`` such masks. For each training patch, 2n distinct masks
   of the pool are drawn (n = ``n_bernoulli_samples``): the mean of the first n samples is
   the input, the mean of the other n the target (Noise2Noise on the pair). Because the
   FFT is linear, the mean of n samples is IFFT(mean(M) X): one inverse FFT per half.
4. Inference: the mean over K inputs (each the mean of n samples of a fresh pool) x T
   passes of the network with dropout on (F2Fd's z = 1/(K T) sum_k sum_t f_theta_t(p_k)),
   each pass over overlapping tiles that are averaged where they overlap.

Memory: F2Fd keeps the whole pool of samples in memory (its example takes about 20 hours).
Here a pool entry is only a seed: mask m is regenerated from (seed, m) on the device when
it is drawn, so memory is the spectrum, two volumes and one patch batch, whatever
``total_samples`` is.
"""

import itertools
import math
from typing import NamedTuple

import numpy

from .backend import to_device, to_host
from .errors import InputError
from .fourier import rfft_k2
from .io.patches import normalization
from .kernels.splitmix import mix64


class F2FdParams(NamedTuple):
    """F2Fd's parameters, with its names and the values of its example run.

    p : float
        Probability of inverting a Fourier coefficient's sign (0.1).
    Vmask_pct : float
        Probability of dropping a block of the volumetric mask (0.5).
    dropout_p : float
        Dropout probability in the network's decoder. F2Fd's example uses 0.8; cupyden's
        default is 0.3 (Self2Self's value): on the simulated GroEL tomogram both peaked
        alike (20.3 and 20.1 dB PSNR in the first 40 s at lr 1e-3) and 0.8 diverged later
        (benchmarks/RESULTS.md, session 5).
    volumetric_scale_factor : int
        Side of the volumetric mask's blocks, in Fourier voxels (8).
    total_samples : int
        Masks in the pool (20).
    n_bernoulli_samples : int
        Samples averaged into one input (and into one target). Default 1, as F2Fd's code
        pairs them (its 6 is a count of separate pairs per patch): the mean of n masks
        keeps all but 0.5^n of the dropped Fourier blocks, which removes the blind spots
        the network must fill from the signal; on a 96^3 GroEL test (2 CPU minutes) n = 6
        reached 12.9 dB PSNR, n = 1 16.6 dB (benchmarks/RESULTS.md).
    subtomo_length : int
        Side of the training patches, voxels, a multiple of 32 (64).
    sphere_fraction : (float, float)
        Range of the share of Fourier space in the always-kept low-frequency sphere
        ((0.05, 0.1)).
    """
    p: float = 0.1
    Vmask_pct: float = 0.5
    dropout_p: float = 0.3
    volumetric_scale_factor: int = 8
    total_samples: int = 20
    n_bernoulli_samples: int = 1
    subtomo_length: int = 64
    sphere_fraction: tuple = (0.05, 0.1)


def _seed(*keys):
    """One integer seed from a tuple of integers (NumPy's SeedSequence)."""
    return int(numpy.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def hash_uniform24(key, index):
    """24 random bits per index: the top 24 bits of SplitMix64's output function of
    key + (index + 1) * golden gamma (Steele, Lea & Flood 2014, OOPSLA). The GPU kernel
    (``kernels.fourier_mask``) computes the same bits.

    Parameters
    ----------
    key : numpy.uint64
    index : int array, any shape, values >= 0

    Returns
    -------
    uint64 numpy array, ``index``'s shape, values in [0, 2^24)
    """
    return mix64(key, index) >> numpy.uint64(40)


def prepare(image, clip=(0.0005, 0.9995)):
    """Clip to quantiles and standardise (F2Fd's preprocessing).

    Parameters
    ----------
    image : array (H, W) or (D, H, W), any real dtype
    clip : (float, float)
        Quantiles.

    Returns
    -------
    x : float32 numpy array, the shape of ``image``
    norm : cupyden.io.patches.Normalization
        ``norm.invert`` maps the network's output back to the input's units.

    Raises
    ------
    InputError
        A constant image (nothing to normalise), or NaN/Inf values.
    """
    x = numpy.asarray(image, numpy.float32)
    if not numpy.isfinite(x).all():
        raise InputError("the image contains NaN or Inf values")
    lo, hi = numpy.quantile(x, clip)
    x = numpy.clip(x, lo, hi)
    norm = normalization(x, "meanstd")
    return norm.apply(x), norm


class FourierPerturbation:
    """Random Fourier masks for one real-space shape (module docstring, step 2).

    Parameters
    ----------
    shape : tuple of int
        Real-space shape, (H, W) or (D, H, W).
    params : F2FdParams
    xp : module
    """

    def __init__(self, shape, params, xp):
        self.shape, self.params, self.xp = tuple(shape), params, xp
        self.ndim = len(shape)
        self.rshape = self.shape[:-1] + (self.shape[-1] // 2 + 1,)
        self.k = xp.asarray(numpy.sqrt(rfft_k2(self.shape)).astype(numpy.float32))  # cycles/voxel

    def sphere_radius(self, fraction):
        """Radius (cycles/voxel) of the ball covering ``fraction`` of Fourier space."""
        if self.ndim == 3:
            return (3 * fraction / (4 * math.pi)) ** (1 / 3)
        return math.sqrt(fraction / math.pi)

    def mask(self, seed):
        """One mask M (module docstring), float32 of ``xp``, shape ``rshape``, values in
        {-1, 0, 1}; a pure function of ``seed``, bit for bit the same on NumPy and CuPy.

        The sphere's radius is drawn by NumPy from the seed; the blocks (hash of the
        block's index, key 2 seed) and signs (hash of the Fourier voxel's flat index, key
        2 seed + 1) by :func:`hash_uniform24`, compared with 24-bit integer thresholds.
        """
        xp, prm = self.xp, self.params
        radius = numpy.float32(self.sphere_radius(
            numpy.random.default_rng(seed).uniform(*prm.sphere_fraction)))
        f = prm.volumetric_scale_factor
        A, B, C = (1,) * (3 - self.ndim) + self.rshape
        nb, nc = -(-B // f), -(-C // f)
        keys = (numpy.uint64(2 * seed), numpy.uint64(2 * seed + 1))
        keep_below = numpy.uint64(round(prm.Vmask_pct * (1 << 24)))
        flip_below = numpy.uint64(round(prm.p * (1 << 24)))
        if xp is not numpy:
            from .kernels.fourier_mask import fourier_mask_kernel
            m = xp.empty(self.rshape, numpy.float32)
            fourier_mask_kernel(self.k, radius, keys[0], keys[1], keep_below, flip_below,
                                B, C, f, nb, nc, m)
            return m
        a, b, c = numpy.ogrid[:A, :B, :C]
        block = ((a // f) * nb + b // f) * nc + c // f
        kept = (self.k.reshape(A, B, C) < radius) | (hash_uniform24(keys[0], block) >= keep_below)
        flip = hash_uniform24(keys[1], numpy.arange(A * B * C).reshape(A, B, C)) < flip_below
        m = numpy.where(kept, numpy.where(flip, numpy.float32(-1), numpy.float32(1)),
                        numpy.float32(0))
        return m.reshape(self.rshape)

    def mean_mask(self, seeds):
        """The mean of the masks of ``seeds``."""
        total = self.mask(seeds[0])
        for s in seeds[1:]:
            total += self.mask(s)
        return total * (1.0 / len(seeds))


class FourierSampler:
    """Means of Fourier samples of one image, regenerated on the device when drawn.

    The image is mirrored by ``pad`` voxels on every side before its FFT, so that its
    periodic extension has no jump between opposite faces: masking the spectrum of a jump
    rings, and in a first 256^3 run the denoised volume was visibly noisier within about
    20 voxels of its faces. Samples are cropped back to the image.

    Parameters
    ----------
    image : float32 array (H, W) or (D, H, W)
        Prepared (``prepare``).
    params : F2FdParams
    xp : module
    seed : int
        Pool ``pool`` entry m is the mask of seed (seed, pool, m).
    pad : int
        Mirror padding, voxels (at most the side - 1).
    """

    def __init__(self, image, params, xp, seed=0, pad=16):
        if params.total_samples < 2 * params.n_bernoulli_samples:
            raise InputError("total_samples (%d) must be at least 2 x n_bernoulli_samples (%d)"
                             % (params.total_samples, 2 * params.n_bernoulli_samples))
        self.params, self.xp, self.seed = params, xp, seed
        image = numpy.asarray(image, numpy.float32)
        self.shape = tuple(image.shape)
        pad = min([pad] + [n - 1 for n in self.shape])
        self.crop = tuple(slice(pad, pad + n) for n in self.shape)
        padded = numpy.pad(image, pad, mode="reflect")
        self.padded_shape = padded.shape
        self.spectrum = xp.fft.rfftn(to_device(padded, xp)).astype(numpy.complex64)
        self.perturb = FourierPerturbation(self.padded_shape, params, xp)

    def sample_mean(self, members, pool=0):
        """IFFT(mean mask x X) over the pool entries ``members``, cropped to the image:
        float32 array of xp."""
        seeds = [_seed(self.seed, pool, m) for m in members]
        m = self.perturb.mean_mask(seeds)
        axes = tuple(range(len(self.shape)))
        full = self.xp.fft.irfftn(self.spectrum * m, s=self.padded_shape, axes=axes)
        return self.xp.ascontiguousarray(full[self.crop]).astype(numpy.float32)

    def draw(self, rng, halves=2):
        """``halves`` disjoint sets of n pool entries, drawn without replacement."""
        n = self.params.n_bernoulli_samples
        members = rng.choice(self.params.total_samples, halves * n, replace=False)
        return [members[i * n:(i + 1) * n] for i in range(halves)]


def patch_origins(shape, size, rng, count):
    """``count`` random patch origins (tuples) with the patch inside ``shape``."""
    return [tuple(int(rng.integers(0, n - size + 1)) for n in shape) for _ in range(count)]


class F2FdPairs:
    """Training pairs of F2Fd for :func:`cupyden.training.fit` (the interface of a patch store:
    ``size``, ``read`` for the validation pairs, ``loader`` for the training batches).

    Parameters
    ----------
    image : float32 array (H, W) or (D, H, W), prepared
    params : F2FdParams
    xp : module
    seed : int
    n_val : int
        Fixed validation pairs (random patches of the same image, other pool draws): the
        image is its own training set, so this tracks convergence, not generalisation.

    Raises
    ------
    InputError
        A side smaller than one patch.
    """

    def __init__(self, image, params, xp, seed=0, n_val=8):
        S = params.subtomo_length
        if min(image.shape) < S:
            raise InputError("the image (%s voxels) is smaller than one %d-voxel patch; use a "
                             "smaller --patch-size (a multiple of 32)"
                             % (" x ".join(map(str, image.shape)), S))
        self.sampler = FourierSampler(image, params, xp, seed)
        self.params, self.xp, self.seed, self.patch = params, xp, seed, S
        self.shape = tuple(image.shape)
        self.per_epoch_patches = max(1, int(numpy.prod([n // S for n in self.shape])))
        rng = numpy.random.default_rng([seed, 1 << 20])
        vx, vy = self._pairs(rng, n_val)
        self.val = (to_host(vx), to_host(vy))

    def _pairs(self, rng, count):
        """``count`` (input, target) patch pairs: arrays of xp (count, 1, *patch), each
        patch from its own draw of pool entries, as F2Fd draws them (two masks and two
        inverse FFTs of the padded volume per patch: 1.7 ms for 288^3 on an H200). One draw
        shared by a whole batch was tried; it is not faster where it matters (the network's
        step is 0.06 s) and changes the data F2Fd trains on (benchmarks/RESULTS.md)."""
        S, xp = self.patch, self.xp
        shape = (count, 1) + (S,) * len(self.shape)
        x, y = xp.empty(shape, numpy.float32), xp.empty(shape, numpy.float32)
        for b, origin in enumerate(patch_origins(self.shape, S, rng, count)):
            box = tuple(slice(o, o + S) for o in origin)
            first, second = self.sampler.draw(rng)
            x[b, 0] = self.sampler.sample_mean(first)[box]
            y[b, 0] = self.sampler.sample_mean(second)[box]
        return x, y

    def size(self, split):
        """Patches per epoch ("train": the image's volume in patches) or validation pairs."""
        return self.per_epoch_patches if split == "train" else len(self.val[0])

    def read(self, split, indices):
        """Validation pairs ``indices`` as host arrays (only "val" is stored)."""
        if split != "val":
            raise ValueError("F2Fd training pairs are drawn by the loader, not read")
        return self.val[0][indices], self.val[1][indices]

    def loader(self, batch_size, xp, seed=0, start=0, resplit=False):
        """Endless training batches from step ``start`` (batch k depends only on seed, k);
        ``resplit`` must be False (F2Fd draws its own pairs)."""
        if resplit:
            raise ValueError("F2Fd draws its own pairs: there is no count split to redraw")
        return F2FdLoader(self, batch_size, seed, start)

    def attr(self, name, default=None):
        return default


class F2FdLoader:
    """Batches (x, target) of xp, (B, 1, *patch), made on the device; batch k is a pure
    function of (seed, k), so a resumed run sees the batches an uninterrupted one would."""

    def __init__(self, pairs, batch_size, seed, start):
        self.pairs, self.B, self.seed, self.step = pairs, batch_size, seed, start
        self.per_epoch = max(1, pairs.per_epoch_patches // batch_size)

    def __iter__(self):
        return self

    def __next__(self):
        rng = numpy.random.default_rng([self.seed, self.step])
        self.step += 1
        return self.pairs._pairs(rng, self.B)

    def close(self):
        pass


def tile_starts(n, tile, overlap):
    """Tile origins along one axis: tiles of ``tile`` covering [0, n), neighbours
    overlapping by at least ``overlap``, spread evenly (F2Fd's grid)."""
    if n <= tile:
        return [0]
    count = int(math.ceil((n - overlap) / (tile - overlap)))
    return sorted({int(round(s)) for s in numpy.linspace(0, n - tile, count)})


def denoise(model, image, params, xp, samples=4, passes=4, tile=None, overlap=None, batch=8,
            seed=1, progress=None):
    """F2Fd inference (module docstring, step 4) on one prepared image.

    Parameters
    ----------
    model : cupyden.models.F2FdUNet
        On ``xp``; put in Monte-Carlo dropout mode here.
    image : float32 array (H, W) or (D, H, W), prepared
    params : F2FdParams
    xp : module
    samples : int
        K, inputs from Fourier samples (each the mean of n samples of the pool).
    passes : int
        T, dropout passes per input (1: one pass without dropout).
    tile : int or None
        Tile side, voxels (reduced to the image's side, rounded down to a multiple of
        the network's 2^depth); None = the training patch (``subtomo_length``), as F2Fd
        predicts. Larger tiles are faster but wrong: a network trained on 64^3 patches
        and applied to the whole 256^3 volume at once darkened its centre with a broad
        blob (its deepest features had been 2^3, not 8^3): 12.9 dB PSNR, against 18.2 dB
        for the same model in 64^3 tiles (benchmarks/RESULTS.md).
    overlap : int or None
        Minimum overlap of neighbouring tiles, voxels; None = tile / 4.
    batch : int
        Tiles per forward pass.
    seed : int
        Seed of the prediction pool (a pool other than training's).
    progress : callable or None
        Called with the number of forward passes done after each one.

    Returns
    -------
    float32 numpy array, the image's shape
        In the prepared (standardised) units.

    Raises
    ------
    InputError
        A side smaller than the network's 2^depth.
    """
    m = model.multiple
    tile = params.subtomo_length if tile is None else tile
    overlap = tile // 4 if overlap is None else overlap
    if min(image.shape) < m:
        raise InputError("the image (%s) is smaller than %d voxels along a side"
                         % (" x ".join(map(str, image.shape)), m))
    sides = [min(tile, n) // m * m for n in image.shape]
    starts = [tile_starts(n, t, min(overlap, t // 2)) for n, t in zip(image.shape, sides)]
    boxes = [tuple(slice(o, o + t) for o, t in zip(origin, sides))
             for origin in itertools.product(*starts)]
    sampler = FourierSampler(image, params, xp, seed)
    if passes > 1:
        model.mc_dropout()
    else:
        model.eval()                          # one pass: the deterministic network
    total = xp.zeros(image.shape, numpy.float32)
    count = xp.zeros(image.shape, numpy.float32)
    for box in boxes:
        count[box] += 1
    rng = numpy.random.default_rng([seed, 7])
    done = 0
    for k in range(samples):
        x = sampler.sample_mean(sampler.draw(rng, halves=1)[0], pool=1)
        for _ in range(passes):
            for i in range(0, len(boxes), batch):
                group = boxes[i:i + batch]
                batch_x = xp.stack([x[box] for box in group])[:, None]
                y = model.forward(batch_x.astype(getattr(model, "dtype", x.dtype), copy=False))
                for box, yb in zip(group, y[:, 0]):
                    total[box] += yb
            done += 1
            if progress:
                progress(done)
    return to_host(total / (count * samples * passes))
