"""Movies as users have them: frames read one at a time, a gain reference, even/odd sums.

Formats: MRC stacks (``.mrc``, ``.mrcs``; frames along Z) and TIFF movies (``.tif``,
``.tiff``; one frame per page, any compression tifffile reads: LZW, as K3 movies come, needs
the ``imagecodecs`` package, ``pip install 'cupyden[movies]'``). EER (Falcon 4) is not
read: the ``eerfile`` package ships no EER file to test against and none was at hand; render
EER movies to TIFF first (e.g. ``relion_convert_to_tiff``).

Frames are read one at a time with plain file reads (MRC) or page by page (TIFF), so host
memory holds one frame whatever the movie's length (a memory map would keep every frame it
touched resident in the process until it is closed).

Orientation follows RELION (RELION's documentation, "Conventions": "TIFF images are flipped
along the slow axis when being read into memory", for compatibility with MotionCor2 and
IMOD): a TIFF frame or gain reference is ``page[::-1]`` in memory; an MRC one is as stored.
The gain reference is then rotated and flipped as RELION's ``--gain_rot`` and
``--gain_flip`` do (RELION 4.0 ``MotioncorrRunner::prepareGainReference`` with
``ImageOp::rotate90/180/270`` and ``ImageOp::flipY/flipX``: rotation first, then the flip),
so the values of a RELION motion-correction job apply unchanged:

    gain_rot k  (0-3)   k x 90 degrees clockwise as relion_display shows it (row 0 at the
                        top): dest[x, H - 1 - y] = src[y, x] for k = 1, i.e. numpy.rot90(g, -k)
    gain_flip 1         upside down (flip about the horizontal axis): dest[y] = src[H - 1 - y]
    gain_flip 2         left to right: dest[:, x] = src[:, W - 1 - x]

and every frame is multiplied by it (the gain reference of K2/K3 counting cameras is a
per-pixel multiplier, as MotionCor2 and RELION apply it).

Frames 0, 2, 4, ... sum to the even half and 1, 3, 5, ... to the odd half (after dropping
the first frames, which carry the most beam-induced motion). Optional whole-frame
alignment: each frame is shifted by the integer offset that maximises its
cross-correlation with the running sum (computed by FFT), a coarse stand-in for
MotionCor2-style patch alignment (Zheng et al. 2017).
"""

import os

import numpy

from ..backend import get_array_module
from ..errors import InputError
from .mrc import read_mrc
from .tiff import TIFF_SUFFIXES, read_tiff

MRC_SUFFIXES = (".mrc", ".mrcs")


class _Frames:
    """What both movie readers share: (F, H, W) frames by index, closed by ``with``."""

    ndim = 3

    def __len__(self):
        return self.shape[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MrcFrames(_Frames):
    """The frames of an MRC movie, read one at a time (plain reads at computed offsets).

    Parameters
    ----------
    path : str

    Attributes
    ----------
    shape : (F, H, W)
    dtype : numpy dtype (as stored, byte order included)
    pixel_size : float
        Å/px (0.0 when the header gives none).
    dose : float or None
        e⁻/Å² from an FEI extended header.

    Raises
    ------
    InputError
        As :func:`cupyden.io.mrc.read_mrc` with ``ndim=3``.
    """

    def __init__(self, path):
        mic = read_mrc(path, ndim=3, mmap=True, check_values=False)
        # the memory map gives the layout (offset past the extended header, byte order);
        # it is dropped at once and frames are read with ordinary reads
        self.shape, self.dtype, self.offset = mic.data.shape, mic.data.dtype, mic.data.offset
        self.pixel_size, self.dose, self.path = mic.pixel_size, mic.dose, path
        del mic
        self._f = open(path, "rb")

    def __getitem__(self, i):
        """Frame ``i`` as a numpy array (H, W) of the stored dtype, in native byte order."""
        H, W = self.shape[1:]
        self._f.seek(self.offset + int(i) * H * W * self.dtype.itemsize)
        frame = numpy.fromfile(self._f, self.dtype, H * W)
        if frame.size != H * W:
            raise InputError("%s: truncated movie (frame %d is incomplete)" % (self.path, i))
        return frame.reshape(H, W).astype(self.dtype.newbyteorder("="), copy=False)

    def close(self):
        self._f.close()


class TiffFrames(_Frames):
    """The frames of a TIFF movie (one per page), read page by page and flipped along the
    slow axis (RELION's convention, see the module's docstring).

    Parameters
    ----------
    path : str

    Attributes
    ----------
    shape : (F, H, W)
    dtype : numpy dtype
    pixel_size : float
        0.0: TIFF movies carry no pixel size cupyden reads.
    dose : None

    Raises
    ------
    InputError
        Missing or unreadable file, a compression that needs ``imagecodecs`` when it is
        absent, pages that are not 2-D or differ in shape.
    """

    def __init__(self, path):
        import tifffile

        if not os.path.isfile(path):
            raise InputError("%s: no such file" % path)
        self.path, self.pixel_size, self.dose = path, 0.0, None
        try:
            self._tif = tifffile.TiffFile(path)
            pages = self._tif.pages
            first = pages[0]
            self.shape = (len(pages),) + tuple(first.shape)
            self.dtype = numpy.dtype(first.dtype)
        except Exception as exc:        # tifffile raises several types for damaged files
            raise InputError("%s: not a readable TIFF movie (%s)" % (path, _first_line(exc)))
        if len(self.shape) != 3:
            raise InputError("%s: TIFF pages of shape %s; a movie needs 2-D frames (one per "
                             "page)" % (path, self.shape[1:]))

    def __getitem__(self, i):
        """Frame ``i`` as a C-contiguous numpy array (H, W), flipped along the slow axis."""
        try:
            frame = self._tif.pages[int(i)].asarray()
        except Exception as exc:
            hint = ("; install imagecodecs (pip install 'cupyden[movies]')"
                    if "imagecodecs" in str(exc) else "")
            raise InputError("%s: cannot decode frame %d (%s)%s"
                             % (self.path, i, _first_line(exc), hint))
        if frame.shape != self.shape[1:]:
            raise InputError("%s: frame %d has shape %s, frame 0 %s"
                             % (self.path, i, frame.shape, self.shape[1:]))
        return numpy.ascontiguousarray(frame[::-1])

    def close(self):
        self._tif.close()


def _first_line(exc):
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def open_movie(path):
    """Open a movie for reading frame by frame; use as a context manager.

    Parameters
    ----------
    path : str
        ``.mrc``/``.mrcs`` (MRC stack) or ``.tif``/``.tiff`` (TIFF, one frame per page).

    Returns
    -------
    MrcFrames or TiffFrames
        ``shape`` (F, H, W), ``movie[i]`` -> frame i (H, W) as stored, ``pixel_size``
        (Å/px), ``dose`` (e⁻/Å² or None).

    Raises
    ------
    InputError
        An EER movie, an unknown suffix, or what the readers raise.
    """
    low = path.lower()
    if low.endswith(TIFF_SUFFIXES):
        return TiffFrames(path)
    if low.endswith(".eer"):
        raise InputError("%s: EER movies are not read by cupyden; render them to TIFF or "
                         "MRC first (e.g. relion_convert_to_tiff)" % path)
    if not low.endswith(MRC_SUFFIXES):
        raise InputError("%s: not a movie cupyden reads (.mrc, .mrcs, .tif, .tiff)" % path)
    return MrcFrames(path)


def read_gain(path, rot=0, flip=0):
    """Read a gain reference and orient it as RELION's ``--gain_rot``/``--gain_flip`` do.

    Parameters
    ----------
    path : str
        MRC (as stored) or TIFF (flipped along the slow axis, as RELION reads TIFF).
    rot : int
        0-3: rotate by rot x 90 degrees clockwise as relion_display shows it.
    flip : int
        0 none, 1 upside down (about the horizontal axis), 2 left to right; after the
        rotation.

    Returns
    -------
    float32 array (H, W)
        The per-pixel multiplier of every frame.

    Raises
    ------
    InputError
        Unreadable file, not 2-D, NaN/Inf or constant values, rot or flip out of range.
    """
    if rot not in (0, 1, 2, 3):
        raise InputError("--gain-rot must be 0, 1, 2 or 3 (x 90 degrees clockwise), got %r"
                         % rot)
    if flip not in (0, 1, 2):
        raise InputError("--gain-flip must be 0 (none), 1 (upside down) or 2 (left to "
                         "right), got %r" % flip)
    if path.lower().endswith(TIFF_SUFFIXES):
        gain = read_tiff(path).data
        if gain.ndim != 2:
            raise InputError("%s: a gain reference must be one 2-D image, got shape %s"
                             % (path, gain.shape))
        gain = gain[::-1]
    else:
        gain = read_mrc(path, ndim=2).data
    return orient_gain(numpy.asarray(gain, numpy.float32), rot, flip)


def orient_gain(gain, rot=0, flip=0):
    """RELION's gain rotation, then flip (see the module's docstring): numpy views.

    Parameters
    ----------
    gain : array (H, W)
    rot : int in 0-3
    flip : int in 0-2

    Returns
    -------
    array (H, W), or (W, H) for an odd ``rot``
    """
    g = numpy.rot90(gain, -rot)            # clockwise with row 0 at the top
    if flip == 1:
        g = g[::-1]
    elif flip == 2:
        g = g[:, ::-1]
    return numpy.ascontiguousarray(g)


def orient_gain_reference(gain, rot=0, flip=0):
    """Loop reference of :func:`orient_gain`: RELION's ImageOp index formulas, pixel by
    pixel (rotate90: dest[x, H - 1 - y] = src[y, x]; rotate180: dest[H - 1 - y, W - 1 - x]
    = src[y, x]; rotate270: dest[W - 1 - x, y] = src[y, x]; flipY: dest[y, x] =
    src[H - 1 - y, x]; flipX: dest[y, x] = src[y, W - 1 - x])."""
    src = numpy.asarray(gain)
    H, W = src.shape
    dest = numpy.empty((W, H) if rot % 2 else (H, W), src.dtype)
    for y in range(H):
        for x in range(W):
            if rot == 0:
                dest[y, x] = src[y, x]
            elif rot == 1:
                dest[x, H - 1 - y] = src[y, x]
            elif rot == 2:
                dest[H - 1 - y, W - 1 - x] = src[y, x]
            else:
                dest[W - 1 - x, y] = src[y, x]
    src = dest.copy()
    h, w = src.shape
    for y in range(h):
        for x in range(w):
            if flip == 1:
                dest[y, x] = src[h - 1 - y, x]
            elif flip == 2:
                dest[y, x] = src[y, w - 1 - x]
    return dest


def integer_shift(ref, frame):
    """Integer (dy, dx) that best aligns ``frame`` to ``ref`` by FFT cross-correlation.

    Parameters
    ----------
    ref, frame : array (H, W), float (numpy or cupy)

    Returns
    -------
    (int, int)
        Shift to apply to frame with ``xp.roll(frame, (dy, dx), axis=(0, 1))``.
    """
    xp = get_array_module(ref, frame)
    cc = xp.fft.irfft2(xp.fft.rfft2(ref) * xp.conj(xp.fft.rfft2(frame)), s=ref.shape)
    H, W = ref.shape
    dy, dx = divmod(int(xp.argmax(cc)), W)
    return (dy - H if dy > H // 2 else dy), (dx - W if dx > W // 2 else dx)


def even_odd_sums(frames, drop_first=0, align=False, gain=None, xp=None):
    """Sum the even and the odd frames of a movie, each frame multiplied by the gain.

    Parameters
    ----------
    frames : array (F, H, W), or a movie from :func:`open_movie`
        Frames in acquisition order, read one at a time.
    drop_first : int
        Frames to discard at the start.
    align : bool
        Shift each frame by an integer offset to the running sum first.
    gain : array (H, W) or None
        Gain reference (from :func:`read_gain`), multiplied into every frame.
    xp : module or None
        Where the sums are made (each frame is copied there as stored, then converted);
        None: where ``gain`` lives, else numpy.

    Returns
    -------
    even, odd : float32 arrays of xp (H, W)
        Sums in float64, rounded once.
    shifts : list of (int, int)
        The shift applied to each kept frame ((0, 0) without alignment).

    Raises
    ------
    InputError
        Fewer than two frames remain, or the gain's shape differs from the frames'.
    """
    F = frames.shape[0] - drop_first
    if frames.ndim != 3 or F < 2:
        raise InputError("a movie needs at least 2 frames after dropping %d, got shape %s"
                         % (drop_first, frames.shape))
    H, W = frames.shape[1:]
    xp = xp or (get_array_module(gain) if gain is not None else numpy)
    if gain is not None:
        if tuple(gain.shape) != (H, W):
            raise InputError("the gain reference is %dx%d px but the frames are %dx%d px; "
                             "check --gain-rot (odd values swap the sides)"
                             % (gain.shape[1], gain.shape[0], W, H))
        gain = xp.asarray(gain).astype(numpy.float64)
    sums = [xp.zeros((H, W), numpy.float64), xp.zeros((H, W), numpy.float64)]
    running = None
    shifts = []
    for i in range(F):
        frame = xp.asarray(frames[drop_first + i]).astype(numpy.float64)
        if gain is not None:
            frame *= gain
        shift = (0, 0)
        if align and running is not None:
            shift = integer_shift(running, frame)
            frame = xp.roll(frame, shift, axis=(0, 1))
        running = frame.copy() if running is None else running + frame
        sums[i % 2] += frame
        shifts.append(shift)
    return sums[0].astype(numpy.float32), sums[1].astype(numpy.float32), shifts
