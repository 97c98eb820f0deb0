"""Ground truth by simulation: atomic models, orientations, projections.

The core used to make particle images with known orientation (clustering) and, later,
whole micrographs and movies. The potential model here is simple and documented: each
atom is a 3-D Gaussian of weight Z (its atomic number, the leading term of its electron
scattering at low resolution) and standard deviation ``sigma`` Å, so a projection along z
is the sum of 2-D Gaussians at the rotated (x, y) positions. Tabulated scattering factors
(Peng 1996), a CTF and Poisson frames belong to the micrograph simulator built on this.

Units: coordinates and sigma in Å; pixel size in Å/px.
"""

import gzip
import os

import numpy

from .errors import InputError

#: Atomic numbers of the elements of biological models (others count as carbon).
ATOMIC_NUMBER = {"H": 1, "C": 6, "N": 7, "O": 8, "P": 15, "S": 16, "MG": 12, "ZN": 30,
                 "FE": 26, "CA": 20, "NA": 11, "K": 19, "CL": 17, "MN": 25, "SE": 34}


def read_atoms(path):
    """Atom coordinates and atomic numbers of a PDB or mmCIF file (gzip allowed).

    Parameters
    ----------
    path : str
        ``.pdb``, ``.ent``, ``.cif`` or ``.mmcif``, optionally ``.gz``.

    Returns
    -------
    xyz : float64 array (A, 3)
        Cartesian coordinates in Å.
    z : float64 array (A,)
        Atomic numbers (6 for unknown elements).

    Raises
    ------
    InputError
        Missing file, or no atoms found.
    """
    if not os.path.isfile(path):
        raise InputError("%s: no such atomic model" % path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = f.read().splitlines()
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith((".cif", ".mmcif")):
        xyz, elements = _read_mmcif(lines)
    else:
        xyz, elements = [], []
        for line in lines:
            if line.startswith(("ATOM  ", "HETATM")):
                xyz.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
                el = line[76:78].strip() or line[12:16].strip().lstrip("0123456789")[:1]
                elements.append(el.upper())
    if not xyz:
        raise InputError("%s: no atoms found" % path)
    z = numpy.array([ATOMIC_NUMBER.get(e, 6) for e in elements], numpy.float64)
    return numpy.array(xyz, numpy.float64), z


def _read_mmcif(lines):
    """Coordinates and elements from the _atom_site loop of an mmCIF file."""
    cols, xyz, elements, i = [], [], [], 0
    while i < len(lines):
        if lines[i].startswith("_atom_site."):
            while i < len(lines) and lines[i].startswith("_atom_site."):
                cols.append(lines[i].split()[0][len("_atom_site."):])
                i += 1
            ix, iy, iz = cols.index("Cartn_x"), cols.index("Cartn_y"), cols.index("Cartn_z")
            ie = cols.index("type_symbol")
            while i < len(lines) and lines[i].startswith(("ATOM", "HETATM")):
                parts = lines[i].split()
                xyz.append((float(parts[ix]), float(parts[iy]), float(parts[iz])))
                elements.append(parts[ie].upper())
                i += 1
            break
        i += 1
    return xyz, elements


def random_rotations(n, rng):
    """Rotation matrices uniformly distributed over SO(3).

    Uniform unit quaternions from three uniform numbers (Shoemake 1992, "Uniform random
    rotations", Graphics Gems III), converted to matrices.

    Parameters
    ----------
    n : int
    rng : numpy.random.Generator

    Returns
    -------
    float64 array (n, 3, 3)
    """
    u1, u2, u3 = rng.random((3, n))
    a, b = numpy.sqrt(1 - u1), numpy.sqrt(u1)
    w, x = a * numpy.sin(2 * numpy.pi * u2), a * numpy.cos(2 * numpy.pi * u2)
    y, z = b * numpy.sin(2 * numpy.pi * u3), b * numpy.cos(2 * numpy.pi * u3)
    return numpy.stack([
        numpy.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        numpy.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        numpy.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)


def project(xyz, z, rotation, box, pixel_size, sigma=1.5):
    """Projection along z of the rotated model: a sum of 2-D Gaussians, one per atom.

    Atoms are centred on their centroid, rotated, and their (x, y) positions deposited on
    the grid with bilinear weights (total weight Z each); the Gaussian of standard
    deviation ``sigma`` Å (B = 8 pi^2 sigma^2) is then applied in Fourier space. The
    bilinear deposit adds its own blur of under a pixel.

    Parameters
    ----------
    xyz : array (A, 3), Å
    z : array (A,)
    rotation : array (3, 3)
    box : int
        Image side in pixels.
    pixel_size : float
        Å/px.
    sigma : float
        Atom width in Å.

    Returns
    -------
    float64 array (box, box)
        Projected potential (arbitrary units, proportional to the sum of Z).
    """
    p = (xyz - xyz.mean(axis=0)) @ rotation.T
    u = p[:, 0] / pixel_size + box / 2          # column
    v = p[:, 1] / pixel_size + box / 2          # row
    i0, j0 = numpy.floor(v).astype(int), numpy.floor(u).astype(int)
    fv, fu = v - i0, u - j0
    img = numpy.zeros((box + 1, box + 1))
    for di, wi in ((0, 1 - fv), (1, fv)):
        for dj, wj in ((0, 1 - fu), (1, fu)):
            ii, jj = i0 + di, j0 + dj
            ok = (ii >= 0) & (ii <= box) & (jj >= 0) & (jj <= box)
            numpy.add.at(img, (ii[ok], jj[ok]), (z * wi * wj)[ok])
    img = img[:box, :box]
    k2 = numpy.fft.fftfreq(box)[:, None] ** 2 + numpy.fft.rfftfreq(box)[None, :] ** 2
    s = sigma / pixel_size
    return numpy.fft.irfft2(numpy.fft.rfft2(img) * numpy.exp(-2 * numpy.pi ** 2 * s * s * k2), s=(box, box))


def particle_set(xyz, z, k, per_class, box, pixel_size, snr, rng, sigma=1.5):
    """Particle images from ``k`` random orientations with white Gaussian noise.

    SNR is per pixel: the variance of the clean projection (over all images) divided by
    the noise variance.

    Parameters
    ----------
    xyz, z : the atomic model (read_atoms)
    k : int
        Number of orientations (true classes).
    per_class : int
        Images per orientation.
    box : int
    pixel_size : float
        Å/px.
    snr : float
    rng : numpy.random.Generator
    sigma : float
        Atom width in Å.

    Returns
    -------
    images : float32 array (k * per_class, box, box), noisy
    labels : int array (k * per_class,)
        The orientation index of each image.
    clean : float32 array (k, box, box)
        The noise-free projection of each orientation.
    """
    rots = random_rotations(k, rng)
    clean = numpy.stack([project(xyz, z, r, box, pixel_size, sigma) for r in rots])
    clean = (clean - clean.mean()) / clean.std()
    labels = numpy.repeat(numpy.arange(k), per_class)
    noise = rng.standard_normal((len(labels), box, box)) / numpy.sqrt(snr)
    return (clean[labels] + noise).astype(numpy.float32), labels, clean.astype(numpy.float32)
