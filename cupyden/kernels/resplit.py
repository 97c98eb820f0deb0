"""A new count split of a batch of patch pairs, one thread per pixel
(``cupyden.io.pairs.resplit``, whose NumPy code is the reference and the documentation).

Each thread recovers its pixel's counts from the two normalised halves, deals the n
electrons anew with one random bit each (``kernels.splitmix``: word w of pixel p is
cupyden_mix(key, p * 2^WORD_BITS + w), ``io.pairs.WORD_BITS``; ``__popcll`` counts the
ones among the first n bits) and writes both halves back normalised. The arithmetic is
NumPy's, in double, so the halves equal the reference's bit for bit.
"""

from ..backend import elementwise_kernel
from ..io.pairs import WORD_BITS
from .splitmix import MIX_CUDA

resplit_kernel = elementwise_kernel(
    "raw uint64 keys, raw float64 loc, raw float64 scale, int64 plane",
    "float32 x, float32 y",
    """
    const long long j = i / plane;
    const unsigned long long p = (unsigned long long)(i %% plane);
    const double l = loc[j], s = scale[j];
    // __dmul_rn / __dadd_rn: no fused multiply-add, NumPy's two roundings
    const double ca = rint(__dadd_rn(__dmul_rn((double)x, s), l));
    const double cb = rint(__dadd_rn(__dmul_rn((double)y, s), l));
    const long long n = (long long)fmax(ca + cb, 0.0);
    long long a = 0;
    for (long long w = 0; 64 * w < n; ++w) {
        const long long m = n - 64 * w;
        const unsigned long long mask = m >= 64 ? ~0ull : ((1ull << m) - 1ull);
        a += __popcll(cupyden_mix(keys[j], (p << %d) | (unsigned long long)w) & mask);
    }
    x = (float)(((double)a - l) / s);
    y = (float)(((double)(n - a) - l) / s);
    """ % WORD_BITS,
    "cupyden_resplit", preamble=MIX_CUDA)
