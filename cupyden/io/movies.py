"""Even/odd frame sums of a movie: two views of one exposure with independent noise.

Frames 0, 2, 4, ... sum to the even half and 1, 3, 5, ... to the odd half (after dropping
the first frames, which carry the most beam-induced motion). Optional whole-frame
alignment: each frame is shifted by the integer offset that maximises its
cross-correlation with the running sum (computed by FFT), a coarse stand-in for
MotionCor2-style patch alignment (Zheng et al. 2017).
"""

import numpy

from ..errors import InputError


def integer_shift(ref, frame):
    """Integer (dy, dx) that best aligns ``frame`` to ``ref`` by FFT cross-correlation.

    Parameters
    ----------
    ref, frame : array (H, W), float

    Returns
    -------
    (int, int)
        Shift to apply to frame with ``numpy.roll(frame, (dy, dx), axis=(0, 1))``.
    """
    cc = numpy.fft.irfft2(numpy.fft.rfft2(ref) * numpy.conj(numpy.fft.rfft2(frame)), s=ref.shape)
    dy, dx = numpy.unravel_index(numpy.argmax(cc), cc.shape)
    H, W = ref.shape
    return (int(dy) - H if dy > H // 2 else int(dy)), (int(dx) - W if dx > W // 2 else int(dx))


def even_odd_sums(frames, drop_first=0, align=False):
    """Sum the even and the odd frames of a movie.

    Parameters
    ----------
    frames : array (F, H, W)
        Frames in acquisition order (a memory map is read frame by frame).
    drop_first : int
        Frames to discard at the start.
    align : bool
        Shift each frame by an integer offset to the running sum first.

    Returns
    -------
    even, odd : float32 arrays (H, W)
    shifts : list of (int, int)
        The shift applied to each kept frame ((0, 0) without alignment).

    Raises
    ------
    InputError
        Fewer than two frames remain.
    """
    F = frames.shape[0] - drop_first
    if frames.ndim != 3 or F < 2:
        raise InputError("a movie needs at least 2 frames after dropping %d, got shape %s"
                         % (drop_first, frames.shape))
    H, W = frames.shape[1:]
    sums = [numpy.zeros((H, W), numpy.float64), numpy.zeros((H, W), numpy.float64)]
    running = None
    shifts = []
    for i in range(F):
        frame = numpy.asarray(frames[drop_first + i], numpy.float64)
        shift = (0, 0)
        if align and running is not None:
            shift = integer_shift(running, frame)
            frame = numpy.roll(frame, shift, axis=(0, 1))
        running = frame.copy() if running is None else running + frame
        sums[i % 2] += frame
        shifts.append(shift)
    return sums[0].astype(numpy.float32), sums[1].astype(numpy.float32), shifts
