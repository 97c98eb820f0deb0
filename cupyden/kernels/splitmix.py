"""Counter-based random bits: SplitMix64's output function of key + (index + 1) x the
golden gamma (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators",
OOPSLA).

A random word is a pure function of (key, index): no generator state to create or carry
(a seeded CuPy generator spends milliseconds initialising its states), any element can be
drawn by any thread, and NumPy (:func:`mix64`) produces the same bits as the CUDA kernels
that include :data:`MIX_CUDA` (``kernels.fourier_mask``, ``kernels.resplit``).
"""

import numpy

#: The CUDA device function ``cupyden_mix(key, i)``, for a kernel's preamble.
MIX_CUDA = """
__device__ unsigned long long cupyden_mix(unsigned long long key, unsigned long long i) {
    unsigned long long z = key + (i + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
"""


def mix64(key, index):
    """64 random bits per index, as ``cupyden_mix`` computes them.

    Parameters
    ----------
    key : int or numpy.uint64
    index : int array, any shape, values >= 0

    Returns
    -------
    uint64 numpy array, ``index``'s shape
    """
    u = numpy.uint64
    with numpy.errstate(over="ignore"):
        z = u(key) + (numpy.asarray(index).astype(u) + u(1)) * u(0x9E3779B97F4A7C15)
        z = (z ^ (z >> u(30))) * u(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> u(27))) * u(0x94D049BB133111EB)
    return z ^ (z >> u(31))
