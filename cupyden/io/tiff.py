"""TIFF images and volumes through tifffile (ImageJ hyperstacks, as exported by Fiji,
napari or cylindra), and one reader for MRC or TIFF.

Units: the voxel size is read from ImageJ's metadata (``spacing`` and ``unit``; a
``unit`` of nm or µm is converted to Å) and returned in Å/voxel; 0.0 when unknown.
"""

import os

import numpy

from ..errors import InputError
from .mrc import Micrograph, check_image, read_mrc

TIFF_SUFFIXES = (".tif", ".tiff")
_UNIT_TO_ANGSTROM = {"a": 1.0, "å": 1.0, "angstrom": 1.0, "nm": 10.0, "nanometer": 10.0,
                     "um": 1e4, "µm": 1e4, "micron": 1e4, "\\u00b5m": 1e4}


def read_tiff(path):
    """Read a 2-D image or a 3-D volume (pages along z) from a TIFF file.

    Parameters
    ----------
    path : str

    Returns
    -------
    Micrograph
        data (H, W) or (D, H, W) as stored; pixel_size in Å/voxel from ImageJ metadata
        (0.0 when absent); dose None.

    Raises
    ------
    InputError
        Missing or unreadable file, more than three dimensions, a non-real dtype, NaN or
        Inf, a constant image.
    """
    import tifffile

    if not os.path.isfile(path):
        raise InputError("%s: no such file" % path)
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            meta = tif.imagej_metadata or {}
    except Exception as exc:          # tifffile raises several types for damaged files
        raise InputError("%s: not a readable TIFF file (%s)" % (path, str(exc).splitlines()[0]
                                                                 if str(exc) else type(exc).__name__))
    data = numpy.squeeze(data)
    if data.ndim not in (2, 3):
        raise InputError("%s: has shape %s; a 2-D image or a 3-D volume is needed"
                         % (path, data.shape))
    if data.dtype.kind not in "uif":
        raise InputError("%s: unsupported TIFF data type %s" % (path, data.dtype))
    scale = _UNIT_TO_ANGSTROM.get(str(meta.get("unit", "")).lower())
    spacing = meta.get("spacing")
    pixel_size = float(spacing) * scale if spacing and scale else 0.0
    check_image(data, path)
    return Micrograph(data, pixel_size, None, path)


def read_image(path, ndim=None):
    """Read a micrograph or volume from MRC or TIFF (by the file's suffix).

    Parameters
    ----------
    path : str
    ndim : None, 2 or 3
        Required number of dimensions (None: either).

    Returns
    -------
    Micrograph

    Raises
    ------
    InputError
        As :func:`read_tiff` and :func:`cupyden.io.mrc.read_mrc`, or the wrong number of
        dimensions.
    """
    if not path.lower().endswith(TIFF_SUFFIXES):
        return read_mrc(path, ndim=ndim)
    image = read_tiff(path)
    if ndim is not None and image.data.ndim != ndim:
        raise InputError("%s: has shape %s but %d dimensions are needed"
                         % (path, image.data.shape, ndim))
    return image


def image_shape(path):
    """The shape of the data in an MRC or TIFF file, read from its header (no values read).

    Returns
    -------
    tuple of int
        (H, W) or (D, H, W) (length-1 axes of a TIFF dropped, as :func:`read_tiff` does).

    Raises
    ------
    InputError
        As :func:`read_image` for a missing or unreadable file.
    """
    if not path.lower().endswith(TIFF_SUFFIXES):
        return tuple(read_mrc(path, mmap=True, check_values=False).data.shape)
    import tifffile

    if not os.path.isfile(path):
        raise InputError("%s: no such file" % path)
    try:
        with tifffile.TiffFile(path) as tif:
            return tuple(n for n in tif.series[0].shape if n != 1)
    except Exception as exc:
        raise InputError("%s: not a readable TIFF file (%s)" % (path, str(exc).splitlines()[0]
                                                                 if str(exc) else type(exc).__name__))
