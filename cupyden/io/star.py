"""RELION STAR files of micrographs and movies, read and written through ``starfile``.

A STAR file (Hall 1991; RELION's dialect, Scheres 2012) holds data blocks; RELION 3.1 and
later put the optics groups in ``data_optics`` and one row per micrograph in
``data_micrographs`` (column ``rlnMicrographName``; movies: ``rlnMicrographMovieName``).
Paths in it are relative to the RELION project folder, from which RELION runs, e.g.
``MotionCorr/job002/Movies/mic_001.mrc``.

RELION 5's tomograms STAR file (``tomograms.star`` of a reconstruction job) has a
``data_global`` table with one row per tilt series: ``rlnTomoName``, and after
reconstruction with even/odd halves ``rlnTomoReconstructedTomogramHalf1`` and
``rlnTomoReconstructedTomogramHalf2``; further blocks (one per tilt series) hold the tilt
images. :func:`read_tomogram_halves` reads the pairs; :func:`write_denoised_tomograms_star`
adds ``rlnTomoReconstructedTomogramDenoised``, as RELION 5's own denoising job does.

``starfile`` (an extra: ``pip install 'cupyden[star]'``) parses and writes the blocks as
pandas tables; cupyden has no STAR parser of its own.
"""

import os

import numpy

from ..errors import InputError
from .atomic import atomic_output

#: The file ``cupyden-denoise`` writes beside the denoised micrographs.
DENOISED_STAR = "denoised_micrographs.star"
#: The file ``cupyden-denoise`` writes beside the denoised tomograms.
DENOISED_TOMOGRAMS_STAR = "denoised_tomograms.star"
#: RELION 5's columns of a tomograms STAR file.
TOMO_NAME = "rlnTomoName"
TOMO_HALVES = ("rlnTomoReconstructedTomogramHalf1", "rlnTomoReconstructedTomogramHalf2")
TOMO_DENOISED = "rlnTomoReconstructedTomogramDenoised"


def star_available():
    """Whether the starfile package (the ``star`` extra) is installed."""
    import importlib.util
    return importlib.util.find_spec("starfile") is not None


def _starfile():
    try:
        import starfile
    except ImportError:
        raise InputError("reading STAR files needs the starfile package; install "
                         "'cupyden[star]' (pip install starfile)")
    return starfile


def read_blocks(path, columns=()):
    """All data blocks of a STAR file.

    Parameters
    ----------
    path : str
    columns : sequence of str
        Columns kept as text (never converted to numbers), e.g. path columns.

    Returns
    -------
    dict
        Block name (``"optics"``, ``"micrographs"``, ...) -> pandas.DataFrame for loop
        blocks, dict for simple blocks; in file order.

    Raises
    ------
    InputError
        Missing or unreadable file, or starfile not installed.
    """
    starfile = _starfile()
    if not os.path.isfile(path):
        raise InputError("%s: no such STAR file" % path)
    try:
        return starfile.read(path, always_dict=True, parse_as_string=list(columns))
    except Exception as exc:      # starfile and pandas raise several types for bad text
        raise InputError("%s: not a readable STAR file (%s)" % (
            path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))


def find_column(blocks, columns, path="STAR file"):
    """(block name, column) of the first of ``columns`` present in a loop block.

    Raises
    ------
    InputError
        No loop block has any of the columns.
    """
    for column in columns:
        for name, block in blocks.items():
            if column in getattr(block, "columns", ()):
                return name, column
    raise InputError("%s: no data block has a %s column" % (path, " or ".join(columns)))


def resolve(name, star_path):
    """A path from a STAR file, resolved the RELION way.

    RELION writes paths relative to the project folder and runs from it: a relative path
    is taken relative to the current directory when it exists there, else relative to the
    STAR file's folder or the nearest of its parents where it exists (a STAR file inside
    ``Job/job003/`` names files from the project folder two levels up).

    Parameters
    ----------
    name : str
        As written in the STAR file.
    star_path : str
        The STAR file.

    Returns
    -------
    str
        The resolved path; ``name`` unchanged when it is absolute or found nowhere (the
        read then reports it missing).
    """
    if os.path.isabs(name) or os.path.exists(name):
        return name
    folder = os.path.dirname(os.path.abspath(star_path))
    while True:
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
            return os.path.relpath(candidate) if _under_cwd(candidate) else candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return name
        folder = parent


def _under_cwd(path):
    return not os.path.relpath(os.path.abspath(path)).startswith(os.pardir)


def read_star_paths(path, columns=("rlnMicrographName",)):
    """The files a STAR file names, resolved (:func:`resolve`), each once, in file order.

    Parameters
    ----------
    path : str
        A STAR file, e.g. RELION's ``micrographs_ctf.star`` or ``corrected_micrographs.star``.
    columns : sequence of str
        Candidate columns; the first one present in a loop block is read
        (``("rlnMicrographMovieName",)`` for movies).

    Returns
    -------
    list of str

    Raises
    ------
    InputError
        Unreadable file, no such column, an empty table, or starfile not installed.
    """
    blocks = read_blocks(path, columns)
    block, column = find_column(blocks, columns, path)
    names = [str(v) for v in blocks[block][column]]
    if not names:
        raise InputError("%s: the %s table lists no file" % (path, block))
    return list(dict.fromkeys(resolve(n, path) for n in names))


def write_denoised_star(source, outputs, path, columns=("rlnMicrographName",), bin_factor=1):
    """Write a copy of a micrographs STAR file that points at the denoised micrographs.

    Every block is kept (the optics table included); in the block with the path column,
    rows whose micrograph was denoised get the output's path (relative to the current
    directory, RELION's project folder, when the output lies under it, else absolute) and
    the other rows are dropped. With binning, ``rlnMicrographPixelSize`` (Å/px) in the
    optics table is multiplied by ``bin_factor``, so that pickers and CTF-aware tools read
    the denoised micrographs' pixel size.

    Parameters
    ----------
    source : str
        The STAR file that named the inputs.
    outputs : dict str -> str
        Resolved input path (as :func:`read_star_paths` returns it) -> output file.
    path : str
        The STAR file to write (atomically).
    columns : sequence of str
        As in :func:`read_star_paths`.
    bin_factor : int
        The binning applied to the micrographs.

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    InputError
        As :func:`read_blocks`, or the folder is not writable.
    """
    starfile = _starfile()
    blocks = read_blocks(source, columns)
    block, column = find_column(blocks, columns, source)
    table = blocks[block]
    resolved = [resolve(str(n), source) for n in table[column]]
    keep = [r in outputs for r in resolved]
    table = table[keep].copy()
    table[column] = [_star_name(outputs[r]) for r, k in zip(resolved, keep) if k]
    blocks[block] = table
    optics = blocks.get("optics")
    if bin_factor != 1 and "rlnMicrographPixelSize" in getattr(optics, "columns", ()):
        optics = optics.copy()
        optics["rlnMicrographPixelSize"] = optics["rlnMicrographPixelSize"] * bin_factor
        blocks["optics"] = optics
    with atomic_output(path, ".star") as tmp:
        starfile.write(blocks, tmp)
    return len(table)


#: RELION 5's columns of a tomograms STAR file (``data_global``) that name files.
TOMOGRAM_FILE_COLUMNS = ("rlnTomoReconstructedTomogram",) + TOMO_HALVES + (TOMO_DENOISED,)


def write_tomograms_star(path, rows):
    """Write a RELION 5 tomograms STAR file: one ``data_global`` row per tomogram.

    File columns (:data:`TOMOGRAM_FILE_COLUMNS`) are written relative to the current
    directory (RELION's project folder) when the file lies under it, else absolute.

    Parameters
    ----------
    path : str
        The STAR file to write (atomically).
    rows : list of dict
        Column (``rlnTomoName``, ``rlnTomoTiltSeriesPixelSize`` in Å/px,
        ``rlnTomoReconstructedTomogramHalf1``, ...) -> value; every row has the same keys.

    Raises
    ------
    InputError
        starfile not installed, or the folder is not writable.
    """
    starfile = _starfile()
    import pandas
    table = pandas.DataFrame([{k: _star_name(v) if k in TOMOGRAM_FILE_COLUMNS else v
                               for k, v in row.items()} for row in rows])
    with atomic_output(path, ".star") as tmp:
        starfile.write({"global": table}, tmp)


def _star_name(path):
    return os.path.relpath(path) if _under_cwd(path) else os.path.abspath(path)


def write_particles_star(path, stack, labels, angles, shifts, pixel_size, image_size):
    """Write a RELION 3.1 particles STAR file: class, in-plane angle and origin per image.

    Conventions (cupyden.align's module docstring): image n is its class average turned
    by ``angles[n]`` degrees counter-clockwise about the box centre and moved by
    ``shifts[n]`` = (x, y) px. RELION forms an image from a reference sampled at
    A^T r with A = R_z(psi) of its Euler convention (Scheres 2012), which turns the
    reference clockwise by psi, so rlnAnglePsi = -angle; its origin is the shift that
    re-centres the particle (the particle's centre is at the box centre minus the origin),
    so rlnOriginX = -shift_x. Classes are numbered from 1, images as ``n@stack`` from 1.

    Parameters
    ----------
    path : str
        The STAR file to write (atomically).
    stack : str
        The particle stack the images came from (written relative to the current
        folder, RELION's project folder, when it lies under it, else absolute).
    labels : int array (N,)
        Class of each image, from 0.
    angles : float array (N,)
        Degrees.
    shifts : float array (N, 2)
        (x, y) px.
    pixel_size : float
        Å/px; 0 when unknown, and then the origins are written in pixels
        (rlnOriginX, rlnOriginY, RELION 3.0's labels) and the optics table has no
        rlnImagePixelSize.
    image_size : int
        Box side, px.

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    InputError
        starfile not installed, or the folder is not writable.
    """
    starfile = _starfile()
    import pandas                                      # starfile's own dependency

    psi = numpy.mod(-numpy.asarray(angles, numpy.float64), 360.0)
    origin = -numpy.asarray(shifts, numpy.float64) * (pixel_size if pixel_size else 1.0)
    name = _star_name(stack)
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
              "rlnImageSize": [int(image_size)], "rlnImageDimensionality": [2]}
    if pixel_size:
        optics["rlnImagePixelSize"] = [float(pixel_size)]
    suffix = "Angst" if pixel_size else ""
    particles = pandas.DataFrame({
        "rlnImageName": ["%06d@%s" % (n + 1, name) for n in range(len(psi))],
        "rlnClassNumber": numpy.asarray(labels, int) + 1,
        "rlnAnglePsi": psi,
        "rlnOriginX" + suffix: origin[:, 0],
        "rlnOriginY" + suffix: origin[:, 1],
        "rlnOpticsGroup": 1})
    with atomic_output(path, ".star") as tmp:
        starfile.write({"optics": pandas.DataFrame(optics), "particles": particles}, tmp)
    return len(particles)


def is_tomograms_star(path):
    """True when ``path`` is a STAR file with RELION 5's even/odd tomogram columns."""
    if not path.lower().endswith(".star"):
        return False
    blocks = read_blocks(path, TOMO_HALVES)
    return any(TOMO_HALVES[0] in getattr(b, "columns", ()) for b in blocks.values())


def read_tomogram_halves(path):
    """The even/odd half tomograms a RELION 5 tomograms STAR file names.

    Parameters
    ----------
    path : str
        E.g. ``Tomograms/job009/tomograms.star``.

    Returns
    -------
    list of (str, str, str)
        (rlnTomoName, half 1 path, half 2 path) per row, paths resolved (:func:`resolve`).

    Raises
    ------
    InputError
        Unreadable file, no table with both half columns, an empty table, starfile
        missing.
    """
    blocks = read_blocks(path, TOMO_HALVES + (TOMO_NAME,))
    block, _ = find_column(blocks, TOMO_HALVES[:1], path)
    table = blocks[block]
    if TOMO_HALVES[1] not in table.columns:
        raise InputError("%s: the %s table has %s but no %s column" % (
            path, block, TOMO_HALVES[0], TOMO_HALVES[1]))
    if not len(table):
        raise InputError("%s: the %s table lists no tomogram" % (path, block))
    names = (table[TOMO_NAME] if TOMO_NAME in table.columns else
             [os.path.splitext(os.path.basename(str(h)))[0] for h in table[TOMO_HALVES[0]]])
    return [(str(n), resolve(str(h1), path), resolve(str(h2), path))
            for n, h1, h2 in zip(names, table[TOMO_HALVES[0]], table[TOMO_HALVES[1]])]


def write_denoised_tomograms_star(source, outputs, path):
    """Write a copy of a RELION 5 tomograms STAR file with
    ``rlnTomoReconstructedTomogramDenoised`` added.

    Every block is kept (the per-tilt-series tables included); in the table with the half
    columns, rows whose tomogram was denoised get the output's path (relative to the
    current directory, RELION's project folder, when under it, else absolute) and the
    other rows are dropped.

    Parameters
    ----------
    source : str
        The tomograms STAR file that named the inputs.
    outputs : dict str -> str
        rlnTomoName -> denoised tomogram.
    path : str
        The STAR file to write (atomically).

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    InputError
        As :func:`read_tomogram_halves`, or the folder is not writable.
    """
    starfile = _starfile()
    rows = read_tomogram_halves(source)
    blocks = read_blocks(source, TOMO_HALVES + (TOMO_NAME, TOMO_DENOISED))
    block, _ = find_column(blocks, TOMO_HALVES[:1], source)
    keep = [name in outputs for name, _, _ in rows]
    table = blocks[block][keep].copy()
    table[TOMO_DENOISED] = [_star_name(outputs[name]) for (name, _, _), k in zip(rows, keep)
                            if k]
    blocks[block] = table
    with atomic_output(path, ".star") as tmp:
        starfile.write(blocks, tmp)
    return len(table)
