"""Channel concatenation on the CPU: channels-last memory, bands of rows.

The U-Nets concatenate a skip to the upsampled features (formula in
:mod:`cupyden.functional.shape`). On channels-last memory each output pixel is two
contiguous channel vectors,

    cat[n, i, j, :Ca] = a[n, i, j, :],  cat[n, i, j, Ca:] = b[n, i, j, :],

whereas ``numpy.concatenate`` returns NCHW memory (a transposing gather from channels-last
inputs, and NCHW for the convolution that follows). The cache is shape.py's (Ca), and
shape.concat_backward's split views serve both.
"""

import numpy

from ..backend import cpu_empty, cpu_map_rows


def concat_forward(a, b):
    """Concatenate along channels (NumPy): y = [a, b].

    Parameters
    ----------
    a : numpy.ndarray (N, Ca, H, W)
    b : numpy.ndarray (N, Cb, H, W), any layouts

    Returns
    -------
    y : numpy.ndarray (N, Ca + Cb, H, W), channels-last memory
    cache : int
        Ca (shape.concat_backward splits there).
    """
    N, Ca, H, W = a.shape
    Cb = b.shape[1]
    dtype = numpy.result_type(a.dtype, b.dtype)
    as_, bs = a.transpose(0, 2, 3, 1), b.transpose(0, 2, 3, 1)
    ys = cpu_empty((N, H, W, Ca + Cb), dtype)

    def band(n, r0, r1, slot):
        ys[n, r0:r1, :, :Ca] = as_[n, r0:r1]
        ys[n, r0:r1, :, Ca:] = bs[n, r0:r1]

    cpu_map_rows(band, N, H, 2 * W * (Ca + Cb))
    return ys.transpose(0, 3, 1, 2), Ca
