"""F2Fd's Fourier mask in one pass (``cupyden.f2fd.FourierPerturbation.mask``).

Random numbers are a counter-based hash of (key, index) (``kernels.splitmix``), so a mask
is a pure function of its seed, with no generator state to create (a seeded CuPy
generator spends milliseconds initialising its XORWOW states per mask), and NumPy
(``cupyden.f2fd.hash_uniform24``) produces the same bits. The top 24 bits of the hash are
compared with an integer threshold, exactly as the NumPy reference does.
"""

from ..backend import elementwise_kernel
from .splitmix import MIX_CUDA

fourier_mask_kernel = elementwise_kernel(
    "float32 k, float32 radius, uint64 key_block, uint64 key_sign, uint64 keep_below, "
    "uint64 flip_below, int64 B, int64 C, int64 f, int64 nb, int64 nc",
    "float32 m",
    """
    const long long c = i % C, b = (i / C) % B, a = i / (C * B);
    const unsigned long long block = (unsigned long long)(((a / f) * nb + b / f) * nc + c / f);
    const bool kept = k < radius || (cupyden_mix(key_block, block) >> 40) >= keep_below;
    const bool flip = (cupyden_mix(key_sign, (unsigned long long)i) >> 40) < flip_below;
    m = kept ? (flip ? -1.0f : 1.0f) : 0.0f;
    """,
    "cupyden_fourier_mask", preamble=MIX_CUDA)
