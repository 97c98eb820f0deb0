"""Gradient through a fused (Leaky)ReLU and its bias in one pass (``functional.conv_cudnn``).

dz = dy where y > 0, else slope * dy: NumPy's expression in ``functional.activation``
makes three passes (compare, select, multiply) and two temporaries; here it is one read of
dy and y and one write. Where y <= 0 and slope == 0 the result is 0 whatever dy holds (as
PyTorch's threshold backward gives).

The kernel also sums dz per channel (the bias gradient) in the same pass, for
channels-last memory, where element e of the dense buffer belongs to channel
e mod F. Thread i of G walks elements i, i + G, i + 2G, ...: with G a multiple of F every
element a thread visits is of channel i mod F, consecutive threads read consecutive
elements (coalesced), and each thread keeps one partial sum; the loop is unrolled by four
so that each thread has four loads in flight (float16 moves half the bytes per load). The caller adds the G / F
partials of each channel (a GEMV), in a fixed order: the result does not depend on timing.
"""

from .. import backend
from ..backend import elementwise_kernel

# slope * dy as T's own multiplication rounds it (the product of two T values is exact in
# double), so dz equals functional.activation's NumPy/CuPy expression bit for bit
_DZ = "y > (T)0 ? dy : (slope == 0.0 ? (T)0 : (T)((double)dy * (double)(T)slope))"

activation_backward_sum_kernel = None if backend.gpu_module() is None else elementwise_kernel(
    "raw T dy_, raw T y_, float64 slope, int64 n, int64 G", "raw T dz_, P part",
    """
    P acc = 0;
    long long e = i;
    for (; e + 3 * G < n; e += 4 * G) {       // four loads of each in flight per thread
        T dy4[4], y4[4];
        for (int u = 0; u < 4; ++u) { dy4[u] = dy_[e + u * G]; y4[u] = y_[e + u * G]; }
        for (int u = 0; u < 4; ++u) {
            const T dy = dy4[u], y = y4[u];
            const T z = %s;
            dz_[e + u * G] = z;
            acc += (P)z;
        }
    }
    for (; e < n; e += G) {
        const T dy = dy_[e], y = y_[e];
        const T z = %s;
        dz_[e] = z;
        acc += (P)z;
    }
    part = acc;
    """ % (_DZ, _DZ),
    "cupyden_activation_backward_sum")

# Forward: y = act(y + b[c]) in place on a dense channels-last buffer (element e is of
# channel e mod F), for a convolution run without its bias and activation fused
# (``kernels.cudnn_fe.conv_forward``: cuDNN's fused tf32 graphs can be several times
# slower than the convolution alone). The sum and the product are taken in double and
# rounded to T (the convolution's output was rounded to T already: the split route can
# differ from a fused epilogue by that one rounding). The channel index uses 32-bit
# unsigned division while the buffer has fewer than 2^32 elements (64-bit division is
# emulated in tens of instructions on the GPU; benchmarks/RESULTS.md, session 7).
BIAS_ACTIVATION = ("raw T b, float64 slope, bool act, uint32 F, bool small", "T y", """
    const unsigned long long c = small ? (unsigned long long)((unsigned int)i % F)
                                       : (unsigned long long)i % F;
    double z = (double)y + (double)b[c];
    if (act && z < 0.0) z *= slope;
    y = (T)z;
""")

# (built only where CuPy is: tests/test_bias_activation_kernel.py compiles the text as C)
bias_activation_kernel = (elementwise_kernel(*BIAS_ACTIVATION, "cupyden_bias_activation")
                          if backend.gpu_module() is not None else None)
