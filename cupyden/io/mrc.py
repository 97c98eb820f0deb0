"""MRC files through mrcfile: micrographs, movies and stacks, volumes.

Reading never opens a file for writing (``mrcfile.open(mode='r')`` or ``mrcfile.mmap``
read-only). Writing goes to a temporary file in the target folder, renamed when complete,
so an interrupted write never leaves a half-written output.

Units: pixel size in Å/px; dose in e⁻/Å².
"""

import os
import warnings
from typing import NamedTuple

import mrcfile
import numpy

from ..backend import get_array_module
from ..errors import InputError
from .atomic import atomic_output

#: MRC modes that hold real images: int8, int16, float32, uint16, float16 (MRC2014).
REAL_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}


class Micrograph(NamedTuple):
    """An image or volume read from a file.

    data : numpy array, (H, W) for a micrograph, (Z, H, W) for a movie, stack or volume
        Values as stored (a memory map for movies and stacks opened with ``mmap=True``).
    pixel_size : float
        Å/px (0.0 when the header gives none).
    dose : float or None
        e⁻/Å² from an FEI1/FEI2 extended header, when present.
    path : str
    """
    data: object
    pixel_size: float
    dose: object
    path: str


#: Leading bytes of formats that users rename or mistake for MRC files.
MAGIC = ((b"\x89PNG", "a PNG image"), (b"II*\x00", "a TIFF file"), (b"MM\x00*", "a TIFF file"),
         (b"\xff\xd8\xff", "a JPEG image"), (b"\x89HDF", "an HDF5 file"),
         (b"\x1f\x8b", "gzip-compressed: gunzip it first"), (b"%PDF", "a PDF document"))


def _sniff(path):
    """What a file that is not an MRC file is, from its first bytes ("a PNG image"), or
    None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return next((what for magic, what in MAGIC if head.startswith(magic)), None)


def _open(path, mmap):
    if not os.path.exists(path):
        raise InputError("%s: no such file" % path)
    if not os.path.isfile(path):
        raise InputError("%s: not a file" % path)
    opener = mrcfile.mmap if mmap else mrcfile.open
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return opener(path, mode="r")
    except (ValueError, OSError, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        what = _sniff(path)
        if what is not None:
            raise InputError("%s: not an MRC file (it is %s)" % (path, what))
        if "Map ID string not found" in msg or "machine stamp" in msg:
            # older writers (e.g. some particle-stack tools) leave the "MAP " ID and the
            # machine stamp empty; the rest of the header is sound: read permissively,
            # if the header then describes a non-empty image
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mrc = opener(path, mode="r", permissive=True)
            if mrc.data is not None and mrc.data.size > 0:
                warnings.warn("%s: header has no MAP ID or machine stamp; read permissively"
                              % path, stacklevel=3)
                return mrc
            mrc.close()
            raise InputError("%s: not an MRC file (no MAP ID in the header, and no image "
                             "in the data)" % path)
        if "smaller than" in msg or "truncat" in msg.lower() or isinstance(exc, EOFError):
            raise InputError("%s: truncated MRC file (%s)" % (path, msg))
        raise InputError("%s: not a readable MRC file (%s)" % (path, msg))


def _dose(mrc):
    """Dose in e⁻/Å² from an FEI extended header (stored in e⁻/m²), else None."""
    try:
        ext = mrc.indexed_extended_header
        if ext is not None and "Dose" in ext.dtype.names:
            dose = float(ext["Dose"][0]) * 1e-20
            return dose if dose > 0 else None
    except Exception:
        return None
    return None


def read_mrc(path, ndim=None, mmap=False, check_values=True):
    """Read an MRC file.

    Parameters
    ----------
    path : str
    ndim : int or None
        2 to require a single image (a 1-section stack is accepted as 2-D), 3 to require
        a stack or volume; None accepts either.
    mmap : bool
        Memory-map the data (movies, stacks) instead of reading it.
    check_values : bool
        Refuse NaN/Inf and constant images (reads all the data).

    Returns
    -------
    Micrograph

    Raises
    ------
    InputError
        Missing, unreadable or truncated file; unsupported mode (complex or packed 4-bit
        modes); wrong number of dimensions; NaN or Inf; a constant image.
    """
    mrc = _open(path, mmap)
    try:
        data = _checked_data(mrc, path, ndim)
        if not mmap:
            data = numpy.array(data)
        pixel_size = float(mrc.voxel_size.x)
        dose = _dose(mrc)
    finally:
        if not mmap:
            mrc.close()
    if check_values:
        check_image(data, path)
    return Micrograph(data, pixel_size, dose, path)


def _checked_data(mrc, path, ndim):
    """The open file's data (a 1-section stack as 2-D when ``ndim`` is 2), after the mode
    and dimension checks of :func:`read_mrc`."""
    mode = int(mrc.header.mode)
    if mode not in REAL_MODES:
        raise InputError("%s: unsupported MRC mode %d (supported: %s)" % (
            path, mode, ", ".join("%d %s" % kv for kv in REAL_MODES.items())))
    data = mrc.data
    if data is None or data.size == 0:
        raise InputError("%s: the MRC file holds no data (its header gives %s)"
                         % (path, "no image" if data is None else "shape %s" % (data.shape,)))
    if ndim == 2 and data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if ndim is not None and data.ndim != ndim:
        what = {2: "a single 2-D micrograph", 3: "a stack, movie or volume"}[ndim]
        raise InputError("%s: has shape %s but %s is needed" % (path, data.shape, what))
    return data


def read_mrc_into(path, allocate, ndim=None):
    """Read an MRC file's data into a buffer the caller provides (e.g. pinned host memory).

    The file is memory-mapped read-only and its data copied once into
    ``allocate(shape, dtype)`` (native byte order), so a pipeline can reuse page-locked
    buffers for fast host-to-device copies. Values are not checked: call
    :func:`check_image` on the result (on the device, where it is cheap).

    Parameters
    ----------
    path : str
    allocate : callable (shape, numpy.dtype) -> numpy array
        Returns a writable array of that shape and dtype.
    ndim : int or None
        As in :func:`read_mrc`.

    Returns
    -------
    Micrograph
        ``data`` is the array ``allocate`` returned, with the values as stored (raw dtype).

    Raises
    ------
    InputError
        As :func:`read_mrc`, except the value checks.
    """
    mrc = _open(path, True)
    try:
        data = _checked_data(mrc, path, ndim)
        buf = allocate(data.shape, data.dtype.newbyteorder("="))
        try:
            numpy.copyto(buf, data)
        except OSError as exc:                    # an I/O error while paging the map in
            raise InputError("%s: cannot be read (%s)" % (path, exc.strerror or exc))
        return Micrograph(buf, float(mrc.voxel_size.x), _dose(mrc), path)
    finally:
        mrc.close()


def check_image(data, name):
    """Refuse NaN/Inf and constant images (NumPy or CuPy arrays).

    Raises
    ------
    InputError
    """
    xp = get_array_module(data)
    if data.dtype.kind == "f" and not bool(xp.isfinite(data).all()):
        raise InputError("%s: contains NaN or Inf values" % name)
    if data.size == 0 or bool(data.min() == data.max()):
        raise InputError("%s: the image is constant (every pixel %s)" % (
            name, data.ravel()[0].item() if data.size else "missing"))


def write_mrc(path, data, pixel_size, float16=False, labels=()):
    """Write an image or stack atomically (temporary file in the same folder, then rename).

    Parameters
    ----------
    path : str
        Output file; its folder must exist and be writable.
    data : array (H, W) or (Z, H, W), real
        Written as float32 (mode 2), or float16 (mode 12) when ``float16``; int8, int16
        and uint16 arrays (e.g. electron counts) keep their type (modes 0, 1, 6).
    pixel_size : float
        Å/px, kept in the header.
    float16 : bool
        Write mode 12 after checking the values fit (|x| <= 65504, no underflow of the
        whole image).
    labels : sequence of str
        Up to 10 header labels of 80 ASCII characters.

    Raises
    ------
    InputError
        The folder is missing or not writable, or the values do not fit float16.
    """
    data = numpy.asarray(data)
    if float16:
        peak = float(numpy.abs(data).max()) if data.size else 0.0
        if peak > 65504:
            raise InputError("%s: values up to %g do not fit float16 (max 65504); "
                             "write float32 instead" % (path, peak))
        out = data.astype(numpy.float16)
    elif data.dtype in (numpy.int8, numpy.int16, numpy.uint16):
        out = data
    else:
        out = data.astype(numpy.float32, copy=False)
    with atomic_output(path, ".mrc") as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(out)
            mrc.voxel_size = pixel_size
            if out.ndim == 3 and path.endswith(".mrcs"):
                mrc.set_image_stack()                 # a stack of images, not a volume
            for text in list(labels)[:10]:
                mrc.add_label(text.encode("ascii", "replace").decode()[:80])
