"""The frequency grid of a real-to-complex DFT, shared by the simulator, the Gaussian
baseline and F2Fd's masks."""

import numpy


def rfft_k2(shape, spacing=1.0, xp=numpy):
    """|k|^2 on the grid of ``rfftn`` of a real array of ``shape`` (any number of axes).

    Parameters
    ----------
    shape : tuple of int
        Real-space shape; the last axis is the halved one (n // 2 + 1 frequencies, the
        last being +Nyquist for even n).
    spacing : float
        Sample spacing (Å/px for 1/Å^2; 1 for cycles/px squared).
    xp : module

    Returns
    -------
    float64 array of xp, shape shape[:-1] + (shape[-1] // 2 + 1,)
    """
    d = len(shape)
    axes = [numpy.fft.fftfreq(n, spacing) for n in shape[:-1]]
    axes.append(numpy.fft.rfftfreq(shape[-1], spacing))
    k2 = numpy.zeros(tuple(shape[:-1]) + (shape[-1] // 2 + 1,))
    for i, k in enumerate(axes):
        k2 += (k ** 2).reshape([-1 if j == i else 1 for j in range(d)])
    return xp.asarray(k2)
