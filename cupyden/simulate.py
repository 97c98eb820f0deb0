"""Ground truth by simulation: atomic models, orientations, micrographs and movies.

Two potential models live here.

* :func:`project` (particle images for clustering): each atom is a 3-D Gaussian of weight
  Z (its atomic number) and width ``sigma``; cheap and adequate for orientation tests.
* :func:`simulate_micrograph` (micrographs and movies with ground truth), the physics:

  1. Specimen. ``n`` copies of an atomic model at random non-overlapping (x, y) positions
     (minimum centre distance = twice the model's radius) and uniformly random
     orientations (Shoemake 1992), at random heights in an ice slab of ``ice_thickness`` Å.
  2. Coulomb potential projected along z, computed in Fourier space per element:
     V_z(q) = (h^2 / (2 pi m0 e)) f_e(q / 2) exp(-B q^2 / 4) sum_atoms exp(-2 pi i q.r),
     with h^2 / (2 pi m0 e) = 47.878 V Å^2 and f_e(s) = sum_i a_i exp(-b_i s^2) the
     five-Gaussian elastic electron scattering factors of Peng, Ren, Dudarev & Whelan
     (1996), Acta Cryst. A52:257, Table 1 (s = sin(theta)/lambda = q/2). B (Å^2) blurs the
     atoms (a B-factor). Atoms are deposited on the pixel grid with bilinear weights (an
     extra blur of under one pixel). The solvent they displace is subtracted (Fraser,
     MacRae & Suzuki 1978, J. Appl. Cryst. 11:693): each non-hydrogen atom removes a
     Gaussian of volume v = 17 Å^3 of water of mean inner potential ``ice_potential``
     (4.5 V), g(q) = V_w v exp(-pi v^(2/3) q^2). The constant potential of the ice slab
     itself is a uniform phase and changes no intensity, so it is left out.
  3. Exit wave in the projection approximation with amplitude contrast A:
     psi = exp((i sqrt(1 - A^2) - A) sigma_e V_z), sigma_e = 2 pi / (lambda V)
     (m0 c^2 + eV) / (2 m0 c^2 + eV) the relativistic interaction constant (rad/(V Å)).
  4. The objective lens multiplies Psi(k) by exp(i chi(k)),
     chi(k) = pi lambda df(theta) k^2 - (pi / 2) Cs lambda^3 k^4,
     df(theta) = df + (astig / 2) cos(2 (theta - theta_ast)), df > 0 underfocus
     (Mindell & Grigorieff 2003, CTFFIND3 convention). For a weak object the image is
     I = 1 + 2 F^-1[CTF Phi] with CTF(k) = -(sqrt(1 - A^2) sin chi + A cos chi), whose zeros
     are at chi = n pi - atan(A / sqrt(1 - A^2)) (:func:`ctf`, :func:`ctf_zeros`).
  5. Intensity I = |psi_image|^2 exp(-t / lambda_in): zero-loss (energy-filtered) imaging
     through t Å of ice with inelastic mean free path lambda_in (3500 Å at 300 kV).
  6. Movie: the dose D (e-/Å^2) is spread over F frames; frame f holds Poisson counts of
     mean I(x - d_f) D / F p^2 (p the pixel size), with drift d_f a Gaussian random walk of
     ``drift`` Å RMS per frame and axis (d_0 = 0; Fourier shift, periodic edges).
     The clean image is the expectation of the frame sum without drift: I D p^2.

Units: coordinates and lengths in Å; pixel size in Å/px; dose in e-/Å^2; defocus in Å;
Cs in mm; voltage in kV. Every draw comes from one seeded generator: same seed, same
output (on a given array module).
"""

import gzip
import os
from typing import NamedTuple

import numpy

from .backend import get_array_module, to_host
from .errors import InputError
from .fourier import rfft_k2
from .io.movies import even_odd_sums

#: The default specimen: the GroEL 14-mer (PDB 1MNF), shipped in cupyden/data.
DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                             "groel_1mnf.pdb.gz")

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


def random_quaternions(n, rng):
    """Unit quaternions (w, x, y, z) uniformly distributed over SO(3).

    From three uniform numbers (Shoemake 1992, "Uniform random rotations", Graphics
    Gems III).

    Parameters
    ----------
    n : int
    rng : numpy.random.Generator

    Returns
    -------
    float64 array (n, 4)
    """
    u1, u2, u3 = rng.random((3, n))
    a, b = numpy.sqrt(1 - u1), numpy.sqrt(u1)
    return numpy.stack([a * numpy.sin(2 * numpy.pi * u2), a * numpy.cos(2 * numpy.pi * u2),
                        b * numpy.sin(2 * numpy.pi * u3), b * numpy.cos(2 * numpy.pi * u3)], -1)


def quaternion_matrices(q):
    """Rotation matrices of unit quaternions (w, x, y, z): float64 array (n, 3, 3)."""
    w, x, y, z = numpy.asarray(q, numpy.float64).T
    return numpy.stack([
        numpy.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        numpy.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        numpy.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)


def random_rotations(n, rng):
    """Rotation matrices uniformly distributed over SO(3): float64 array (n, 3, 3)
    (:func:`random_quaternions` converted by :func:`quaternion_matrices`)."""
    return quaternion_matrices(random_quaternions(n, rng))


def project(xyz, z, rotation, box, pixel_size, sigma=1.5):
    """Projection along z of the rotated model: a sum of 2-D Gaussians, one per atom.

    One image of :func:`projections` (no shift).

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
    return projections(xyz, z, numpy.asarray(rotation)[None], box, pixel_size, sigma)[0]


def projections(xyz, z, rotations, box, pixel_size, sigma=1.5, shifts=None, xp=numpy):
    """Projections along z of the model in several orientations, each a sum of 2-D
    Gaussians, one per atom.

    Atoms are centred on their centroid, rotated, and their (x, y) positions deposited on
    the grid with bilinear weights (total weight Z each; atoms outside the box are lost);
    the Gaussian of standard deviation ``sigma`` Å (B = 8 pi^2 sigma^2) is then applied in
    Fourier space. The bilinear deposit adds its own blur of under a pixel. The centroid
    lands on pixel (row, column) = (box / 2 + shift_y, box / 2 + shift_x); x runs along
    columns, y along rows.

    Parameters
    ----------
    xyz : array (A, 3), Å
    z : array (A,)
    rotations : array (n, 3, 3)
    box : int
        Image side in pixels.
    pixel_size : float
        Å/px.
    sigma : float
        Atom width in Å.
    shifts : array (n, 2) or None
        (x, y) offset of each projection's centre, px (None = 0).
    xp : module
        numpy or cupy (the result is on the host).

    Returns
    -------
    float64 numpy array (n, box, box)
        Projected potential (arbitrary units, proportional to the sum of Z).
    """
    n = len(rotations)
    shifts = numpy.zeros((n, 2)) if shifts is None else numpy.asarray(shifts, numpy.float64)
    local = xp.asarray(xyz - xyz.mean(axis=0))
    weight = xp.asarray(numpy.asarray(z, numpy.float64))
    out = numpy.empty((n, box, box))
    s = sigma / pixel_size
    blur = xp.exp(-2 * numpy.pi ** 2 * s * s * rfft_k2((box, box), 1.0, xp))
    chunk = max(1, 2 ** 22 // max(len(xyz), 1))             # ~4 M atoms per deposit
    for c0 in range(0, n, chunk):
        rot = xp.asarray(rotations[c0:c0 + chunk])
        m = len(rot)
        p = xp.einsum("nij,aj->nai", rot[:, :2], local)      # (m, A, 2): rotated x, y in Å
        u = p[..., 0] / pixel_size + box / 2 + xp.asarray(shifts[c0:c0 + chunk, 0])[:, None]
        v = p[..., 1] / pixel_size + box / 2 + xp.asarray(shifts[c0:c0 + chunk, 1])[:, None]
        i0, j0 = xp.floor(v).astype(numpy.int64), xp.floor(u).astype(numpy.int64)
        fv, fu = v - i0, u - j0
        image = xp.arange(m)[:, None] * (box * box)          # (m, 1): offset of each image
        grid = xp.zeros(m * box * box)
        for di, wi in ((0, 1 - fv), (1, fv)):
            for dj, wj in ((0, 1 - fu), (1, fu)):
                ii, jj = i0 + di, j0 + dj
                ok = (ii >= 0) & (ii < box) & (jj >= 0) & (jj < box)
                index = (image + ii * box + jj)[ok]
                grid += xp.bincount(index, weights=(weight * wi * wj)[ok], minlength=m * box * box)
        img = xp.fft.irfft2(xp.fft.rfft2(grid.reshape(m, box, box)) * blur, s=(box, box))
        out[c0:c0 + m] = to_host(img)
    return out


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


# --------------------------------------------------------------------------------------
# Micrographs and movies with ground truth (the physics is in the module docstring)
# --------------------------------------------------------------------------------------

#: Peng, Ren, Dudarev & Whelan (1996), Acta Cryst. A52:257-276, Table 1: elastic electron
#: scattering factors of neutral atoms, f_e(s) = sum_i a_i exp(-b_i s^2) for 0 <= s <= 2
#: Å^-1; (a_1..a_5 in Å, b_1..b_5 in Å^2), keyed by atomic number. Other elements use
#: carbon's curve scaled by Z / 6 (a rough stand-in; biological models rarely have them).
PENG1996 = {
    1: ((0.0349, 0.1201, 0.1970, 0.0573, 0.1195), (0.5347, 3.5867, 12.3471, 18.9525, 38.6269)),
    6: ((0.0893, 0.2563, 0.7570, 1.0487, 0.3575), (0.2465, 1.7100, 6.4094, 18.6113, 50.2523)),
    7: ((0.1022, 0.3219, 0.7982, 0.8197, 0.1715), (0.2451, 1.7481, 6.1925, 17.3894, 48.1431)),
    8: ((0.0974, 0.2921, 0.6910, 0.6990, 0.2039), (0.2067, 1.3815, 4.6943, 12.7105, 32.4726)),
    15: ((0.2548, 0.6106, 1.4541, 2.3204, 0.8477), (0.2908, 1.8740, 8.5176, 24.3434, 63.2996)),
    16: ((0.2497, 0.5628, 1.3899, 2.1865, 0.7715), (0.2681, 1.6711, 7.0267, 19.5377, 50.3888)),
}

# CODATA 2018 constants (SI)
_H, _M0, _E, _C = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
_M0C2_EV = _M0 * _C ** 2 / _E                        # 510998.95 eV
#: h^2 / (2 pi m0 e) in V Å^2: converts f_e (Å) into the potential's Fourier transform.
POTENTIAL_PER_SCATTERING = _H ** 2 / (2 * numpy.pi * _M0 * _E) * 1e20   # 47.878
#: Volume of solvent displaced per non-hydrogen atom of a protein, Å^3 (~1.21 Å^3/Da
#: times ~14 Da per heavy atom with its hydrogens).
DISPLACED_VOLUME = 17.0


def electron_wavelength(voltage_kv):
    """Relativistic electron wavelength in Å: h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2)))
    (0.01969 Å at 300 kV)."""
    v = voltage_kv * 1e3
    return _H / numpy.sqrt(2 * _M0 * _E * v * (1 + v / (2 * _M0C2_EV))) * 1e10


def interaction_constant(voltage_kv):
    """sigma_e = 2 pi / (lambda V) (m0 c^2 + eV) / (2 m0 c^2 + eV), in rad / (V Å)
    (Kirkland 2010, "Advanced computing in electron microscopy", eq. 5.6; 6.5e-4 at 300 kV)."""
    v = voltage_kv * 1e3
    return 2 * numpy.pi / (electron_wavelength(voltage_kv) * v) * (_M0C2_EV + v) / (2 * _M0C2_EV + v)


def scattering_factor(z, s):
    """Peng 1996 electron scattering factor f_e(s) in Å of atomic number ``z``.

    Parameters
    ----------
    z : int
    s : float array (NumPy or CuPy)
        sin(theta) / lambda = q / 2, in 1/Å.

    Returns
    -------
    array like ``s``
    """
    xp = get_array_module(s)
    a, b = PENG1996.get(int(z), PENG1996[6])
    scale = 1.0 if int(z) in PENG1996 else z / 6.0
    return scale * sum(ai * xp.exp(-bi * s * s) for ai, bi in zip(a, b))


class Optics(NamedTuple):
    """Microscope and CTF parameters.

    voltage : float
        kV (300).
    cs : float
        Spherical aberration, mm (2.7).
    amplitude_contrast : float
        A, fraction (0.07).
    defocus : float
        Mean defocus in Å, positive = underfocus (15000).
    astigmatism : float
        Defocus difference between the two principal axes, Å (0).
    astigmatism_angle : float
        Angle of the axis of largest defocus from the x axis, degrees (0).
    bfactor : float
        B-factor applied to the potential, Å^2 (50).
    """
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.07
    defocus: float = 15000.0
    astigmatism: float = 0.0
    astigmatism_angle: float = 0.0
    bfactor: float = 50.0


def spatial_frequencies(shape, pixel_size, xp=numpy):
    """(ky, kx) grids of the full 2-D DFT of an image of ``shape``, in 1/Å (float64)."""
    H, W = shape
    ky = xp.asarray(numpy.fft.fftfreq(H, pixel_size))[:, None]
    kx = xp.asarray(numpy.fft.fftfreq(W, pixel_size))[None, :]
    return ky, kx


def rfft_frequencies(shape, pixel_size, xp=numpy):
    """(ky, kx) grids of the real 2-D DFT (``rfft2``) of an image of ``shape``, in 1/Å;
    kx >= 0 (the last column of an even width is +Nyquist)."""
    ky, kx = spatial_frequencies(shape, pixel_size, xp)
    return ky, xp.abs(kx[:, :shape[1] // 2 + 1])


def chi(k, theta, optics):
    """Phase aberration chi(k) in rad (module docstring, step 4).

    Parameters
    ----------
    k : array
        Spatial frequency magnitude, 1/Å.
    theta : array or float
        Azimuth of the frequency, rad.
    optics : Optics
    """
    xp = get_array_module(k)
    lam = electron_wavelength(optics.voltage)
    df = optics.defocus + 0.5 * optics.astigmatism * xp.cos(
        2 * (theta - numpy.deg2rad(optics.astigmatism_angle)))
    cs = optics.cs * 1e7                                   # mm -> Å
    return numpy.pi * lam * df * k ** 2 - 0.5 * numpy.pi * cs * lam ** 3 * k ** 4


def ctf(shape, pixel_size, optics, xp=numpy):
    """Contrast transfer function of the weak-object image, on the full DFT grid.

    CTF(k) = -(sqrt(1 - A^2) sin chi(k) + A cos chi(k)) (module docstring, step 4); the
    B-factor is applied to the potential, not here.

    Parameters
    ----------
    shape : (H, W)
    pixel_size : float
        Å/px.
    optics : Optics
    xp : module

    Returns
    -------
    float64 array (H, W), DC at [0, 0] (numpy.fft order)
    """
    ky, kx = spatial_frequencies(shape, pixel_size, xp)
    c = chi(xp.sqrt(kx * kx + ky * ky), xp.arctan2(ky, kx), optics)
    a = optics.amplitude_contrast
    return -(numpy.sqrt(1 - a * a) * xp.sin(c) + a * xp.cos(c))


def ctf_zeros(optics, n, theta=0.0):
    """Spatial frequencies (1/Å) of the first ``n`` CTF zeros along azimuth ``theta``.

    Zeros are where chi = m pi - atan(A / sqrt(1 - A^2)), m = 1, 2, ...: the roots u = k^2
    of (pi/2) Cs lambda^3 u^2 - pi lambda df u + c_m = 0, smaller root first
    (module docstring, step 4).

    Returns
    -------
    float64 array (n,)
    """
    lam = electron_wavelength(optics.voltage)
    df = optics.defocus + 0.5 * optics.astigmatism * numpy.cos(
        2 * (theta - numpy.deg2rad(optics.astigmatism_angle)))
    a = optics.amplitude_contrast
    target = numpy.arange(1, n + 1) * numpy.pi - numpy.arctan(a / numpy.sqrt(1 - a * a))
    qa = 0.5 * numpy.pi * optics.cs * 1e7 * lam ** 3
    qb = numpy.pi * lam * df
    if qa == 0:
        u = target / qb
    else:
        u = (qb - numpy.sqrt(qb * qb - 4 * qa * target)) / (2 * qa)
    return numpy.sqrt(u)


class ParticleStack(NamedTuple):
    """Simulated particle images of known orientation, in-plane angle and shift.

    images : float32 (N, box, box)
        CTF-modulated projections plus white Gaussian noise.
    labels : int (N,)
        Orientation (true class) of each image, 0 .. k - 1.
    angles : float64 (N,)
        In-plane rotation, degrees in [0, 360).
    shifts : float64 (N, 2)
        (x, y) offset of the particle's centre from the box centre, px.
    clean : float32 (k, box, box)
        Each orientation's CTF-modulated projection at angle 0 and shift 0, on the images'
        scale (the noise-free, aligned image: what a perfect class average is).
    """
    images: numpy.ndarray
    labels: numpy.ndarray
    angles: numpy.ndarray
    shifts: numpy.ndarray
    clean: numpy.ndarray


def in_plane(angles):
    """Rotations about the beam axis z by ``angles`` degrees: float64 (n, 3, 3), taking
    (x, y) to (x cos a - y sin a, x sin a + y cos a)."""
    a = numpy.deg2rad(numpy.asarray(angles, numpy.float64))
    c, s, zero, one = numpy.cos(a), numpy.sin(a), numpy.zeros_like(a), numpy.ones_like(a)
    return numpy.stack([numpy.stack([c, -s, zero], -1), numpy.stack([s, c, zero], -1),
                        numpy.stack([zero, zero, one], -1)], 1)


def particle_stack(xyz, z, k, per_class, box, pixel_size, snr, rng, optics=Optics(),
                   max_shift=3.0, sigma=1.5, xp=numpy):
    """Particle images as picked from one micrograph: ``k`` orientations, each image at a
    uniformly random in-plane angle and shift, through the micrograph's CTF, in white noise.

    Image n is the projection of the model rotated by R_z(angle_n) R_{label_n}
    (:func:`in_plane`, :func:`random_rotations`), centred at box / 2 + shift_n, so that
    image_n(r) = ref_{label_n}(R(-angle_n)(r - shift_n)) for the aligned projection ref
    (r = (x, y) from the box centre). Each projection is multiplied in Fourier space by the
    weak-object CTF of ``optics`` (:func:`ctf`; the sign makes protein dark at underfocus)
    and scaled so that the signal has unit variance over the stack; white Gaussian noise of
    variance 1 / ``snr`` is added (a counting detector's noise is white shot noise: DATA.md,
    "Facts measured on the K2 micrograph").

    Parameters
    ----------
    xyz, z : the atomic model (:func:`read_atoms`), Å
    k : int
        Orientations (true classes).
    per_class : int
        Images per orientation.
    box : int
        Image side, px.
    pixel_size : float
        Å/px.
    snr : float
        Per-pixel SNR: signal variance / noise variance.
    rng : numpy.random.Generator
    optics : Optics
        The micrograph's microscope and CTF (one defocus for every particle).
    max_shift : float
        Shifts are uniform in the disc of this radius, px.
    sigma : float
        Atom width, Å.
    xp : module
        Where the projections are computed (the result is on the host).

    Returns
    -------
    ParticleStack

    Raises
    ------
    InputError
        Non-positive k, per_class, SNR or pixel size.
    """
    if k < 1 or per_class < 1 or snr <= 0 or pixel_size <= 0:
        raise InputError("k, images per class, SNR and pixel size must be positive")
    rots = random_rotations(k, rng)
    labels = numpy.repeat(numpy.arange(k), per_class)
    N = len(labels)
    angles = rng.uniform(0, 360, N)
    radius, phi = max_shift * numpy.sqrt(rng.random(N)), rng.uniform(0, 2 * numpy.pi, N)
    shifts = numpy.stack([radius * numpy.cos(phi), radius * numpy.sin(phi)], -1)
    transfer = to_host(ctf((box, box), pixel_size, optics))          # full DFT grid

    def through_ctf(p):                                                # (n, box, box)
        return numpy.fft.ifft2(numpy.fft.fft2(p) * transfer).real

    clean = through_ctf(projections(xyz, z, rots, box, pixel_size, sigma, xp=xp))
    signal = through_ctf(projections(xyz, z, in_plane(angles) @ rots[labels], box,
                                     pixel_size, sigma, shifts, xp))
    scale = 1 / signal.std()
    noise = rng.standard_normal((N, box, box)) / numpy.sqrt(snr)
    return ParticleStack((signal * scale + noise).astype(numpy.float32), labels, angles,
                         shifts, (clean * scale).astype(numpy.float32))


def model_radius(xyz):
    """Largest distance of an atom from the model's centroid, Å (any orientation fits a
    disc of this radius)."""
    return float(numpy.sqrt(((xyz - xyz.mean(axis=0)) ** 2).sum(axis=1)).max())


def place_particles(n, shape, pixel_size, radius, rng, max_tries=200):
    """Random non-overlapping particle centres inside the field (2-D) or volume (3-D).

    Sequential random placement: a candidate is kept when it is at least 2 ``radius``
    from every kept centre and ``radius`` from the edges.

    Parameters
    ----------
    n : int
        Copies wanted.
    shape : (H, W) or (D, H, W)
    pixel_size : float
        Å/px (Å/voxel).
    radius : float
        Particle radius, Å.
    rng : numpy.random.Generator
    max_tries : int
        Candidates tried per particle before giving up.

    Returns
    -------
    float64 array (m, len(shape)), m <= n: centres in pixels ((row, column) or
    (z, row, column))
    """
    d = len(shape)
    r = radius / pixel_size
    if min(shape) <= 2 * r:
        return numpy.zeros((0, d))
    kept = numpy.zeros((0, d))
    for _ in range(n * max_tries):
        if len(kept) == n:
            break
        c = rng.uniform((r,) * d, tuple(m - r for m in shape))
        if not len(kept) or ((kept - c) ** 2).sum(axis=1).min() >= (2 * r) ** 2:
            kept = numpy.vstack([kept, c])
    return kept


def projected_potential(xyz, z, centres, rotations, shape, pixel_size, bfactor=0.0,
                        ice_potential=4.5, xp=numpy):
    """Projected Coulomb potential of the placed copies minus the solvent they displace.

    Parameters
    ----------
    xyz : float array (A, 3)
        Atom coordinates of the model, Å.
    z : array (A,)
        Atomic numbers.
    centres : array (n, 2)
        (row, column) in pixels of each copy's centroid.
    rotations : array (n, 3, 3)
    shape : (H, W)
    pixel_size : float
        Å/px.
    bfactor : float
        Å^2.
    ice_potential : float
        Mean inner potential of the displaced water, V (0 = no solvent subtraction).
    xp : module

    Returns
    -------
    float64 array (H, W) of xp
        V_z in V Å (module docstring, step 2).
    """
    return _potential(xyz, z, centres, rotations, shape, pixel_size, bfactor, ice_potential, xp)


def coulomb_potential(xyz, z, centres, rotations, shape, voxel_size, bfactor=0.0,
                      ice_potential=4.5, xp=numpy):
    """The 3-D Coulomb potential of the placed copies minus the displaced solvent.

    The formula of step 2 with q over three axes: V(q) = 47.878 f_e(q / 2) exp(-B q^2 / 4)
    sum_atoms exp(-2 pi i q.r) (V Å^3), divided by the voxel volume.

    Parameters
    ----------
    xyz, z, rotations, bfactor, ice_potential, xp : as :func:`projected_potential`
    centres : array (n, 3)
        (z, row, column) in voxels of each copy's centroid.
    shape : (D, H, W)
    voxel_size : float
        Å/voxel.

    Returns
    -------
    float64 array (D, H, W) of xp
        Mean potential in each voxel, V (0 in the ice around the particles).
    """
    return _potential(xyz, z, centres, rotations, shape, voxel_size, bfactor, ice_potential, xp)


def _potential(xyz, z, centres, rotations, shape, pixel_size, bfactor, ice_potential, xp):
    """Step 2 on a 2-D (projected, V Å) or 3-D (V) grid."""
    d = len(shape)
    q2 = rfft_k2(shape, pixel_size, xp)
    spectrum = xp.zeros(tuple(shape[:-1]) + (shape[-1] // 2 + 1,), numpy.complex128)
    local = xp.asarray(xyz - xyz.mean(axis=0))
    rot = xp.asarray(rotations)
    cen = xp.asarray(centres)
    heavy = xp.zeros(tuple(shape), numpy.float64)
    for element in numpy.unique(z):
        sel = xp.asarray(numpy.flatnonzero(z == element))
        density = _deposit(local[sel], rot, cen, shape, pixel_size, xp)
        f = scattering_factor(element, xp.sqrt(q2) / 2)
        spectrum += xp.fft.rfftn(density) * (POTENTIAL_PER_SCATTERING * f)
        if element > 1:
            heavy += density
    if ice_potential:
        v = DISPLACED_VOLUME
        spectrum -= xp.fft.rfftn(heavy) * (ice_potential * v * xp.exp(-numpy.pi * v ** (2 / 3) * q2))
    spectrum *= xp.exp(-bfactor * q2 / 4)
    return xp.fft.irfftn(spectrum, s=tuple(shape), axes=tuple(range(d))) / pixel_size ** d


def _deposit(local, rotations, centres, shape, pixel_size, xp):
    """Linear-interpolation deposit of every rotated copy's atoms on a 2-D or 3-D grid:
    atom counts per pixel (voxel). Axis -1 is x, -2 is y, -3 is z."""
    d = len(shape)
    # (n, A, 3): rotated atoms of each copy; coordinate of grid axis a is component d-1-a
    p = xp.einsum("nij,aj->nai", rotations, local)
    coords = [(p[..., d - 1 - a] / pixel_size + centres[:, None, a]).ravel() for a in range(d)]
    base = [xp.floor(c).astype(numpy.int64) for c in coords]
    frac = [c - b for c, b in zip(coords, base)]
    size = int(numpy.prod(shape))
    grid = xp.zeros(size, numpy.float64)
    for corner in numpy.ndindex(*(2,) * d):
        index, weight, ok = 0, 1.0, True
        for a in range(d):
            i = base[a] + corner[a]
            index = index * shape[a] + i
            weight = weight * (frac[a] if corner[a] else 1 - frac[a])
            ok = ok & (i >= 0) & (i < shape[a])
        grid += xp.bincount(index[ok], weights=weight[ok], minlength=size)
    return grid.reshape(shape)


def image_intensity(potential, pixel_size, optics, ice_thickness=0.0, inelastic_mfp=3500.0):
    """Image intensity (1 = the unscattered beam) of a projected potential.

    Parameters
    ----------
    potential : float array (H, W)
        V_z in V Å (:func:`projected_potential`).
    pixel_size : float
        Å/px.
    optics : Optics
    ice_thickness : float
        Å, for the zero-loss attenuation exp(-t / inelastic_mfp).
    inelastic_mfp : float
        Å (0 = no attenuation).

    Returns
    -------
    float64 array (H, W)  (module docstring, steps 3 to 5)
    """
    xp = get_array_module(potential)
    a = optics.amplitude_contrast
    phase = interaction_constant(optics.voltage) * potential
    wave = xp.exp((1j * numpy.sqrt(1 - a * a) - a) * phase)
    ky, kx = spatial_frequencies(potential.shape, pixel_size, xp)
    propagator = xp.exp(1j * chi(xp.sqrt(kx * kx + ky * ky), xp.arctan2(ky, kx), optics))
    image = xp.fft.ifft2(xp.fft.fft2(wave) * propagator)
    intensity = image.real ** 2 + image.imag ** 2
    if inelastic_mfp and ice_thickness:
        intensity *= numpy.exp(-ice_thickness / inelastic_mfp)
    return intensity


def drift_trajectory(frames, drift, rng):
    """Per-frame shifts (frames, 2) in Å: a Gaussian random walk of ``drift`` Å RMS per
    frame and axis, starting at 0."""
    steps = rng.standard_normal((frames, 2)) * drift
    steps[0] = 0
    return numpy.cumsum(steps, axis=0)


def expose(intensity, pixel_size, dose, frames, shifts, seed, xp=numpy):
    """Poisson frames of an image intensity (module docstring, step 6).

    Parameters
    ----------
    intensity : float array (H, W) of xp
    pixel_size : float
        Å/px.
    dose : float
        Total e-/Å^2.
    frames : int
    shifts : array (frames, 2)
        (row, column) drift in Å per frame.
    seed : int
        Seed of the Poisson draws.
    xp : module

    Returns
    -------
    int16 numpy array (frames, H, W)
        Electron counts.

    Raises
    ------
    InputError
        When a frame's counts could exceed int16.
    """
    H, W = intensity.shape
    mean = intensity * (dose / frames * pixel_size ** 2)
    if float(mean.max()) > 1000:
        raise InputError("%.0f expected counts per pixel and frame overflow the int16 movie; "
                         "use more frames" % float(mean.max()))
    rng = xp.random.default_rng(seed)
    kyr, kxr = rfft_frequencies((H, W), pixel_size, xp)
    spectrum = xp.fft.rfft2(mean)
    movie = numpy.empty((frames, H, W), numpy.int16)
    for f in range(frames):
        dy, dx = shifts[f]
        if dy or dx:
            shifted = xp.fft.irfft2(spectrum * xp.exp(-2j * numpy.pi * (kyr * dy + kxr * dx)),
                                    s=(H, W))
            lam = xp.maximum(shifted, 0)
        else:
            lam = mean
        movie[f] = to_host(rng.poisson(lam).astype(numpy.int16))
    return movie


class SimulatedMicrograph(NamedTuple):
    """movie : int16 (F, H, W) counts; clean : float32 (H, W) expected counts of the frame
    sum without drift (I D p^2); particles : list of dict (row, column in px, height in
    Å, quaternion w, x, y, z); shifts : float64 (F, 2) drift in Å; params : dict."""
    movie: numpy.ndarray
    clean: numpy.ndarray
    particles: list
    shifts: numpy.ndarray
    params: dict


def simulate_micrograph(xyz, z, shape, pixel_size, optics=Optics(), particles=None,
                        ice_thickness=300.0, dose=40.0, frames=40, drift=0.0, seed=0,
                        ice_potential=4.5, inelastic_mfp=3500.0, xp=numpy):
    """A movie of copies of an atomic model in ice, and its clean image.

    Parameters
    ----------
    xyz, z : the atomic model (:func:`read_atoms`), Å
    shape : (H, W)
        Pixels.
    pixel_size : float
        Å/px.
    optics : Optics
    particles : int or None
        Copies wanted; None fills about a quarter of the area. Fewer are placed when they
        do not fit (``params["particles"]`` says how many).
    ice_thickness : float
        Å; particle heights are uniform in the slab (recorded only).
    dose : float
        e-/Å^2 over all frames.
    frames : int
    drift : float
        Å RMS per frame and axis (0 = none).
    seed : int
    ice_potential, inelastic_mfp : see :func:`projected_potential`, :func:`image_intensity`
    xp : module
        numpy or cupy (the arrays returned are on the host).

    Returns
    -------
    SimulatedMicrograph

    Raises
    ------
    InputError
        Non-positive size, pixel size, dose or frames.
    """
    H, W = shape
    if min(H, W) < 1 or pixel_size <= 0 or dose <= 0 or frames < 1:
        raise InputError("size, pixel size, dose and frames must be positive")
    rng = numpy.random.default_rng(seed)
    radius = model_radius(xyz)
    if particles is None:
        particles = int(0.25 * H * W * pixel_size ** 2 / (numpy.pi * radius ** 2))
    centres = place_particles(particles, shape, pixel_size, radius, rng)
    quats = random_quaternions(len(centres), rng)
    heights = rng.uniform(-0.5, 0.5, len(centres)) * max(ice_thickness - 2 * radius, 0)
    shifts = drift_trajectory(frames, drift, rng)
    if len(centres):
        potential = projected_potential(xyz, z, centres, quaternion_matrices(quats), shape,
                                        pixel_size, optics.bfactor, ice_potential, xp)
    else:
        potential = xp.zeros(shape)
    intensity = image_intensity(potential, pixel_size, optics, ice_thickness, inelastic_mfp)
    movie = expose(intensity, pixel_size, dose, frames, shifts, int(rng.integers(2 ** 63)), xp)
    clean = to_host(intensity * (dose * pixel_size ** 2)).astype(numpy.float32)
    table = [{"row": float(c[0]), "column": float(c[1]), "height_A": float(h),
              "qw": float(q[0]), "qx": float(q[1]), "qy": float(q[2]), "qz": float(q[3])}
             for c, h, q in zip(centres, heights, quats)]
    params = {"shape": [H, W], "pixel_size_A": pixel_size, "dose_e_per_A2": dose,
              "frames": frames, "drift_A_per_frame": drift, "seed": seed,
              "particles_requested": particles, "particles": len(centres),
              "particle_radius_A": radius, "ice_thickness_A": ice_thickness,
              "ice_potential_V": ice_potential, "inelastic_mfp_A": inelastic_mfp,
              "optics": optics._asdict(),
              "wavelength_A": electron_wavelength(optics.voltage),
              "interaction_constant_rad_per_VA": interaction_constant(optics.voltage),
              "scattering_factors": "Peng et al. 1996, Acta Cryst. A52:257, Table 1"}
    return SimulatedMicrograph(movie, clean, table, shifts, params)


class Slab(NamedTuple):
    """Copies of a model placed in a slab (:func:`place_in_slab`).

    centres : float64 (n, 3), (z, row, column) in voxels; quaternions : float64 (n, 4),
    (w, x, y, z); thickness : float, Å, the slab the centres lie in; requested : int,
    copies asked for; radius : float, Å, the model's; depth : int, voxels along z of the
    layer the copies occupy (centres' slab plus one diameter, at most the volume's D).
    """
    centres: numpy.ndarray
    quaternions: numpy.ndarray
    thickness: float
    requested: int
    radius: float
    depth: int


def place_in_slab(xyz, shape, voxel_size, particles, slab_thickness, rng):
    """Random non-overlapping copies of a model, uniformly oriented, in a slab of ice.

    The centres lie in a slab of ``slab_thickness`` Å around the middle z of the volume
    (:func:`place_particles` in a layer of that thickness plus one particle diameter);
    orientations are Shoemake's (:func:`random_quaternions`).

    Parameters
    ----------
    xyz : float array (A, 3)
        The model, Å.
    shape : (D, H, W)
        Volume, voxels (D along the beam).
    voxel_size : float
        Å/voxel.
    particles : int or None
        Copies wanted; None fills about 15% of the slab's volume.
    slab_thickness : float or None
        Å; None = 60% of the volume's depth.
    rng : numpy.random.Generator

    Returns
    -------
    Slab
    """
    D, H, W = shape
    radius = model_radius(xyz)
    slab = 0.6 * D * voxel_size if slab_thickness is None else float(slab_thickness)
    depth = min(D, int(round(slab / voxel_size)) + int(2 * numpy.ceil(radius / voxel_size)))
    if particles is None:
        particles = int(0.15 * slab * H * W * voxel_size ** 2 / (4 / 3 * numpy.pi * radius ** 3))
    centres = place_particles(particles, (depth, H, W), voxel_size, radius, rng)
    centres[:, 0] += (D - depth) / 2
    quats = random_quaternions(len(centres), rng)
    return Slab(centres, quats, slab, particles, radius, depth)


class SimulatedTomogram(NamedTuple):
    """noisy : float32 (D, H, W) Poisson counts; clean : float32 (D, H, W) their
    expectation; particles : list of dict (z, row, column in voxels, quaternion w, x, y,
    z); params : dict."""
    noisy: numpy.ndarray
    clean: numpy.ndarray
    particles: list
    params: dict


def simulate_tomogram(xyz, z, shape=(256, 256, 256), voxel_size=5.0, particles=None,
                      slab_thickness=None, counts=5.0, contrast=0.2, bfactor=200.0, seed=0,
                      ice_potential=4.5, xp=numpy):
    """A tomogram-like volume of copies of an atomic model in an ice slab, with Poisson noise.

    A deliberately simple observation model, for ground truth in 3-D denoising (no tilt
    series, no missing wedge, no CTF): the solvent-subtracted Coulomb potential V
    (:func:`coulomb_potential`) darkens the expected counts per voxel,

        clean = counts * max(1 - contrast * V, 0),   noisy ~ Poisson(clean)

    (at 5 Å/voxel GroEL's voxels hold V of 1.6 V (median) to 2.9 V, so the default 0.2/V
    darkens protein by about a third). Copies sit at random non-overlapping positions
    with uniformly random orientations, their centres in a slab of ``slab_thickness`` Å
    around the middle z (:func:`place_in_slab`). :func:`simulate_tilt_series` is the
    realistic model (tilt series, CTF, missing wedge, correlated noise).

    Parameters
    ----------
    xyz, z : the atomic model (:func:`read_atoms`), Å
    shape : (D, H, W)
        Voxels (D along the beam).
    voxel_size : float
        Å/voxel.
    particles, slab_thickness : as :func:`place_in_slab`
    counts : float
        Expected counts per voxel in the ice.
    contrast : float
        Darkening per volt of potential, 1/V.
    bfactor : float
        Å^2 (200 blurs the atoms to about the voxel size at 5 Å/voxel).
    seed : int
    ice_potential : float
        V, the displaced water's (:func:`coulomb_potential`).
    xp : module
        numpy or cupy (the arrays returned are on the host).

    Returns
    -------
    SimulatedTomogram

    Raises
    ------
    InputError
        Non-positive sizes, counts or contrast.
    """
    if min(shape) < 1 or voxel_size <= 0 or counts <= 0 or contrast <= 0:
        raise InputError("size, voxel size, counts and contrast must be positive")
    rng = numpy.random.default_rng(seed)
    centres, quats, slab, particles, radius, _ = place_in_slab(
        xyz, shape, voxel_size, particles, slab_thickness, rng)
    if len(centres):
        v = coulomb_potential(xyz, z, centres, quaternion_matrices(quats), shape, voxel_size,
                              bfactor, ice_potential, xp)
    else:
        v = xp.zeros(shape)
    clean = counts * xp.maximum(1 - contrast * v, 0)
    noisy = xp.random.default_rng(int(rng.integers(2 ** 63))).poisson(clean)
    table = [{"z": float(c[0]), "row": float(c[1]), "column": float(c[2]), "qw": float(q[0]),
              "qx": float(q[1]), "qy": float(q[2]), "qz": float(q[3])}
             for c, q in zip(centres, quats)]
    params = {"shape": list(shape), "voxel_size_A": voxel_size, "particles_requested": particles,
              "particles": len(centres), "particle_radius_A": radius, "slab_thickness_A": slab,
              "counts_per_voxel": counts, "contrast_per_V": contrast, "bfactor_A2": bfactor,
              "potential_max_V": float(v.max()), "ice_potential_V": ice_potential, "seed": seed,
              "scattering_factors": "Peng et al. 1996, Acta Cryst. A52:257, Table 1"}
    return SimulatedTomogram(to_host(noisy).astype(numpy.float32),
                             to_host(clean).astype(numpy.float32), table, params)


# --------------------------------------------------------------------------------------
# Tilt series and their tomograms (the physics is in simulate_tilt_series' docstring)
# --------------------------------------------------------------------------------------

#: Grant & Grigorieff (2015), eLife 4:e06980, eq. 3 and its fit at 300 kV: the critical
#: exposure N_e(k) = a k^b + c (e-/Å^2, k in 1/Å) at which the amplitude at k has fallen
#: to exp(-1/2); (a, b, c).
CRITICAL_EXPOSURE_300KV = (0.245, -1.665, 2.81)

#: Columns per strip of constant defocus when the defocus gradient of a tilted
#: specimen is simulated (at 8 Å/px and 60 degrees the defocus changes by 110 Å across
#: half a strip).
GRADIENT_STRIP = 16


def tilt_angles(low=-60.0, high=60.0, step=3.0):
    """Tilt angles low, low + step, ..., high in degrees (float64 array; 41 by default)."""
    n = int(round((high - low) / step)) + 1
    return low + step * numpy.arange(n)


def dose_symmetric_order(angles):
    """Acquisition order of the grouped dose-symmetric scheme (Hagen, Wan & Briggs 2017,
    J. Struct. Biol. 197:191): the tilt nearest 0 first, the next one on the positive
    side, then groups of two alternating sides: 0, +3, -3, -6, +6, +9, -9, -12, ...

    Parameters
    ----------
    angles : float array (T,), degrees

    Returns
    -------
    int array (T,)
        Indices into ``angles`` in acquisition order.
    """
    angles = numpy.asarray(angles, numpy.float64)
    start = int(numpy.argmin(abs(angles)))
    pos = sorted((i for i in range(len(angles)) if angles[i] > angles[start]),
                 key=lambda i: angles[i])
    neg = sorted((i for i in range(len(angles)) if angles[i] <= angles[start] and i != start),
                 key=lambda i: -angles[i])
    order, sides, take = [start], [pos, neg], 1
    while pos or neg:
        for side in sides:
            order += side[:take]
            del side[:take]
            take = 2
    return numpy.array(order)


def exposure_filter(shape, pixel_size, exposure, xp=numpy):
    """Amplitude left at each frequency after an exposure (Grant & Grigorieff 2015, eq. 5):
    q(k) = exp(-N / (2 N_e(k))), N_e from :data:`CRITICAL_EXPOSURE_300KV` (1 at k = 0).

    Parameters
    ----------
    shape : (H, W)
    pixel_size : float
        Å/px.
    exposure : float
        N, e-/Å^2 received before (the middle of) the image.
    xp : module

    Returns
    -------
    float64 array (H, W // 2 + 1) of xp, on the ``rfft2`` grid
    """
    a, b, c = CRITICAL_EXPOSURE_300KV
    k = xp.sqrt(rfft_k2(shape, pixel_size, xp))
    k[0, 0] = 1.0                                      # replaced by 1 below
    q = xp.exp(-exposure / (2 * (a * k ** b + c)))
    q[0, 0] = 1.0
    return q


def tilt_matrix(angle):
    """Rotation of the specimen by ``angle`` degrees about the y axis, on (x, y, z):
    x' = x cos + z sin, y' = y, z' = -x sin + z cos. float64 (3, 3)."""
    c, s = numpy.cos(numpy.deg2rad(angle)), numpy.sin(numpy.deg2rad(angle))
    return numpy.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def tilted_projection(xyz, z, centres, rotations, angle, shape, voxel_size, bfactor=0.0,
                      ice_potential=4.5, xp=numpy):
    """Projected potential of the copies of a volume's specimen tilted by ``angle``.

    The volume's voxel (k, i, j) sits at x = (j - W/2) p, y = (i - H/2) p, z = (k - D/2) p;
    tilting about y (:func:`tilt_matrix`) sends it to the image column
    u = ((j - W/2) cos + (k - D/2) sin) + W/2, row i. Each copy's centre moves so and its
    rotation becomes tilt @ rotation; :func:`projected_potential` does the rest (so at 0
    degrees the image is the sum of :func:`coulomb_potential` along z times p).

    Parameters
    ----------
    xyz, z : the atomic model (:func:`read_atoms`), Å
    centres : array (n, 3)
        (z, row, column) of each copy in the volume, voxels.
    rotations : array (n, 3, 3)
    angle : float
        Degrees.
    shape : (D, H, W)
        The volume; the image is (H, W).
    voxel_size : float
        Å/voxel = Å/px.
    bfactor, ice_potential, xp : as :func:`projected_potential`

    Returns
    -------
    float64 array (H, W) of xp
        V_z in V Å.
    """
    D, H, W = shape
    tilt = tilt_matrix(angle)
    c = numpy.asarray(centres, numpy.float64)
    rel = numpy.stack([c[:, 2] - W / 2, c[:, 1] - H / 2, c[:, 0] - D / 2], 1)   # (n, 3) x y z
    moved = rel @ tilt.T
    centres2 = numpy.stack([moved[:, 1] + H / 2, moved[:, 0] + W / 2], 1)      # (row, column)
    return projected_potential(xyz, z, centres2, tilt @ numpy.asarray(rotations), (H, W),
                               voxel_size, bfactor, ice_potential, xp)


def ramp_filter(images):
    """R-weighting of single-axis tilt images (Radermacher 1988, J. Electron Microsc.
    Tech. 9:359): multiply by |k_x| (cycles/px) along x, the axis normal to the tilt
    axis, in each row; zero-padded to twice the width so the filter does not wrap.
    |0| = 0 removes each row's mean.

    Parameters
    ----------
    images : float array (..., H, W), NumPy or CuPy

    Returns
    -------
    array like ``images`` (its float dtype)
    """
    xp = get_array_module(images)
    W = images.shape[-1]
    k = xp.sqrt(rfft_k2((2 * W,), 1.0, xp)).astype(images.dtype)         # (W + 1,)
    return xp.fft.irfft(xp.fft.rfft(images, n=2 * W, axis=-1) * k, n=2 * W,
                        axis=-1)[..., :W].astype(images.dtype)


def _tilt_weights(angles):
    """Angular width (rad) each tilt stands for: half the gaps to its neighbours (the
    outer tilts count their one gap), so a sum over tilts approximates the integral over
    the angle of the filtered back-projection."""
    a = numpy.deg2rad(numpy.asarray(angles, numpy.float64))
    if len(a) == 1:
        return numpy.ones(1)
    rank = numpy.argsort(a)
    gaps = numpy.diff(a[rank])
    weights = numpy.empty(len(a))
    weights[rank] = 0.5 * (numpy.concatenate([gaps[:1], gaps]) +
                           numpy.concatenate([gaps, gaps[-1:]]))
    return weights


def back_project(images, angles, depth, weights=None):
    """Back-projection of single-axis tilt images into a volume, linear interpolation.

    Each voxel (k, i, j) adds, for each tilt, the image value at row i and column
    u = (j - W/2) cos + (k - D/2) sin + W/2 (:func:`tilted_projection`'s geometry),
    interpolated linearly between the two nearest columns (0 outside the image), times
    the tilt's weight. Vectorised over voxels and over leading axes, one tilt at a
    time; :func:`back_project_loop` is the loop reference.

    Parameters
    ----------
    images : float array (..., T, H, W), NumPy or CuPy
        Tilt images, leading axes (e.g. two halves) reconstructed together.
    angles : sequence of float (T,)
        Degrees, one per image.
    depth : int
        D, voxels along z.
    weights : sequence of float (T,) or None
        Per-tilt factors (None: 1).

    Returns
    -------
    array (..., D, H, W) of the images' module and dtype
    """
    xp = get_array_module(images)
    T, H, W = images.shape[-3:]
    lead = images.shape[:-3]
    weights = numpy.ones(T) if weights is None else numpy.asarray(weights, numpy.float64)
    out = xp.zeros(lead + (H, depth, W), images.dtype)                 # rows outermost
    x = xp.arange(W, dtype=numpy.float64)[None, :] - W / 2               # (1, W)
    zc = xp.arange(depth, dtype=numpy.float64)[:, None] - depth / 2      # (D, 1)
    for t in range(T):
        a = numpy.deg2rad(float(angles[t]))
        u = x * numpy.cos(a) + zc * numpy.sin(a) + W / 2                 # (D, W) columns
        u0 = xp.floor(u)
        f = u - u0
        u0 = u0.astype(numpy.int64)
        image = images[..., t, :, :]                                     # (..., H, W)
        for col, w in ((u0, 1 - f), (u0 + 1, f)):
            inside = (col >= 0) & (col < W)
            w = (w * inside * weights[t]).astype(images.dtype)
            out += image[..., xp.clip(col, 0, W - 1)] * w                # (..., H, D, W)
    return xp.moveaxis(out, -3, -2)                                      # (..., D, H, W)


def back_project_loop(images, angles, depth, weights=None):
    """Loop reference of :func:`back_project` (NumPy; one voxel column at a time)."""
    T, H, W = images.shape[-3:]
    weights = numpy.ones(T) if weights is None else numpy.asarray(weights, numpy.float64)
    out = numpy.zeros(images.shape[:-3] + (depth, H, W))
    for t in range(T):
        a = numpy.deg2rad(float(angles[t]))
        for k in range(depth):
            for j in range(W):
                u = (j - W / 2) * numpy.cos(a) + (k - depth / 2) * numpy.sin(a) + W / 2
                u0 = int(numpy.floor(u))
                for col, w in ((u0, 1 - (u - u0)), (u0 + 1, u - u0)):
                    if 0 <= col < W:
                        out[..., k, :, j] += weights[t] * w * images[..., t, :, col]
    return out


def weighted_back_projection(images, angles, depth):
    """Filtered (R-weighted) back-projection: :func:`ramp_filter` then
    :func:`back_project` with each tilt weighted by its angular width in radians, the
    discrete form of f(x, z) = integral over theta of (P_theta * h)(u) d theta, h the ramp
    (Radermacher 1988). Over +-90 degrees it inverts the projection (up to the mean);
    over a smaller range the volume lacks the missing wedge of Fourier space: the
    directions within 90 - max|angle| degrees of the beam axis z.

    Parameters
    ----------
    images : float array (..., T, H, W)
    angles : sequence of float (T,), degrees
    depth : int

    Returns
    -------
    array (..., D, H, W)
        The volume whose projections are the images (each voxel one pixel of path).
    """
    return back_project(ramp_filter(images), angles, depth, _tilt_weights(angles))


def _tilt_intensity(potential, pixel_size, optics, angle, ice, inelastic_mfp, gradient):
    """Image intensity of one tilt: the ice's path grows as 1 / cos(angle); with
    ``gradient`` the defocus varies across x' (strips of :data:`GRADIENT_STRIP` columns)."""
    thickness = ice / numpy.cos(numpy.deg2rad(angle))
    if not gradient or angle == 0:
        return image_intensity(potential, pixel_size, optics, thickness, inelastic_mfp)
    xp = get_array_module(potential)
    W = potential.shape[1]
    slope = numpy.tan(numpy.deg2rad(angle))
    out = xp.empty_like(potential)
    for c0 in range(0, W, GRADIENT_STRIP):
        c1 = min(c0 + GRADIENT_STRIP, W)
        x = ((c0 + c1 - 1) / 2 - W / 2) * pixel_size              # Å, the strip's centre
        strip = optics._replace(defocus=optics.defocus + x * slope)
        out[:, c0:c1] = image_intensity(potential, pixel_size, strip, thickness,
                                        inelastic_mfp)[:, c0:c1]
    return out


class SimulatedTiltSeries(NamedTuple):
    """A simulated tilt series, its tomograms and the truth (:func:`simulate_tilt_series`).

    clean : float32 (D, H, W)
        The truth: the Coulomb potential, V (no CTF, no noise, no missing wedge).
    even, odd, full : float32 (D, H, W)
        Weighted back-projections of the even-frame half, of the odd-frame half and of
        all frames, in image contrast (:func:`simulate_tilt_series`, step 6);
        full = (n_even even + n_odd odd) / frames, the mean of the halves for an even
        number of frames.
    tilts_even, tilts_odd : float32 (T, H, W)
        Electron counts of each tilt's even and odd frame sums, tilts in ``angles`` order.
    angles : float64 (T,)
        Degrees, ascending.
    order : int (T,)
        Acquisition order: indices into ``angles``.
    pixel_size : float
        Å/px of the images, Å/voxel of the volumes.
    particles : list of dict
        z, row, column (voxels), qw, qx, qy, qz of each copy.
    params : dict
        Every parameter, the dose before each tilt, the defocus at each tilt's centre.
    expected : float32 (D, H, W)
        The noise-free tomogram: the weighted back-projection of each tilt's expected
        contrast (the image intensity without Poisson noise), the expectation of ``even``,
        ``odd`` and ``full`` over the noise (the reconstruction is linear in the images).
        It has the CTF and the missing wedge of the tomograms: it is what a denoiser of
        the halves estimates (Noise2Noise's minimiser, E[odd | even]; Lehtinen et al.
        2018), whereas ``clean`` is what no denoiser sees.
    """
    clean: numpy.ndarray
    even: numpy.ndarray
    odd: numpy.ndarray
    full: numpy.ndarray
    tilts_even: numpy.ndarray
    tilts_odd: numpy.ndarray
    angles: numpy.ndarray
    order: numpy.ndarray
    pixel_size: float
    particles: list
    params: dict
    expected: numpy.ndarray = None


ORDERS = ("dose-symmetric", "sequential")


def simulate_tilt_series(xyz, z, shape=(96, 256, 256), voxel_size=8.0, angles=None,
                         order="dose-symmetric", optics=None, particles=None,
                         slab_thickness=None, dose=120.0, frames=8, defocus_gradient=False,
                         damage=True, truth_bfactor=None, ice_potential=4.5,
                         inelastic_mfp=3500.0, seed=0, xp=numpy):
    """A single-axis tilt series of copies of an atomic model in ice, its even/odd
    tomograms, and the clean volume.

    1. Specimen: copies at random non-overlapping positions and orientations, centres in
       a slab of ``slab_thickness`` Å around the middle z (:func:`place_in_slab`); the
       ice layer holding them is that slab plus one particle diameter, t Å.
    2. Truth: the Coulomb potential V of the copies on the volume's grid
       (:func:`coulomb_potential`, B-factor ``truth_bfactor``).
    3. Tilt theta (about the y axis, :func:`tilted_projection`): the projected potential
       of the tilted copies, computed from the atoms (no interpolation of the volume);
       with ``damage``, attenuated for the dose received before the middle of the tilt's
       exposure (:func:`exposure_filter`, Grant & Grigorieff 2015; the acquisition
       ``order`` sets that dose: "dose-symmetric", :func:`dose_symmetric_order`, or
       "sequential" from the lowest angle).
    4. Image: :func:`image_intensity` (projection approximation, CTF at the defocus of
       ``optics`` at the tilt's centre, zero-loss attenuation through t / cos(theta) Å of
       ice); with ``defocus_gradient`` the defocus changes across the image by
       x' tan(theta) (x' the distance from the tilt axis in Å; larger on the +x' side at
       positive tilts, a convention), in strips of :data:`GRADIENT_STRIP` columns. The
       beam sees only the volume's specimen (nothing outside the box at high tilt).
    5. Exposure: dose / T e-/Å^2 per tilt in ``frames`` Poisson frames (:func:`expose`,
       no drift); the even and the odd frames are summed into two halves.
    6. Tomograms: each half's counts become contrast, counts / b - 1 with b the half's
       expected counts in the ice (dose, pixel area, attenuation), and are
       reconstructed by weighted back-projection (:func:`weighted_back_projection`,
       Radermacher 1988). Protein is dark (negative) at underfocus, as in IMOD's
       reconstructions. The noise of a tomogram is correlated between voxels and has
       the missing wedge; the two halves' noises are independent. The expected
       contrast (no Poisson draw) is reconstructed the same way: ``expected``, the
       noise-free tomogram.

    The images are formed at the voxel size (no oversampling: detail beyond its Nyquist
    frequency aliases; choose ``optics.bfactor`` to damp it).

    Parameters
    ----------
    xyz, z : the atomic model (:func:`read_atoms`), Å
    shape : (D, H, W)
        Volume in voxels (D along the beam at 0 degrees); the images are (H, W).
    voxel_size : float
        Å/voxel, also the images' Å/px.
    angles : sequence of float or None
        Tilts in degrees, |angle| < 90; None: -60 to +60 in steps of 3 (41 tilts).
    order : str
        "dose-symmetric" or "sequential".
    optics : Optics or None
        None: :class:`Optics` with 30000 Å of defocus.
    particles : int or None
        Copies wanted; None fills about 15% of the slab's volume.
    slab_thickness : float or None
        Å; None = 60% of the volume's depth.
    dose : float
        Total e-/Å^2 over the tilt series.
    frames : int
        Frames per tilt, at least 2.
    defocus_gradient : bool
    damage : bool
        Radiation damage by the accumulated dose (300 kV curve whatever the voltage).
    truth_bfactor : float or None
        Å^2 of the clean volume; None: ``optics.bfactor``.
    ice_potential, inelastic_mfp : see :func:`projected_potential`, :func:`image_intensity`
    seed : int
    xp : module
        numpy or cupy (the arrays returned are on the host).

    Returns
    -------
    SimulatedTiltSeries

    Raises
    ------
    InputError
        Non-positive sizes or dose, fewer than 2 frames, a tilt of 90 degrees or more, an
        unknown order, or more than 1000 counts per pixel and frame.
    """
    D, H, W = shape
    optics = Optics(defocus=30000.0) if optics is None else optics
    angles = tilt_angles() if angles is None else numpy.asarray(angles, numpy.float64)
    angles = numpy.sort(angles)
    T = len(angles)
    if min(shape) < 1 or voxel_size <= 0 or dose <= 0 or frames < 2 or T < 1:
        raise InputError("volume size, voxel size, dose, tilts and frames (at least 2) must "
                         "be positive")
    if abs(angles).max() >= 90:
        raise InputError("tilt angles must lie within (-90, 90) degrees, got %g"
                         % abs(angles).max())
    if order not in ORDERS:
        raise InputError("order must be one of %s, got %r" % (", ".join(ORDERS), order))
    acquisition = dose_symmetric_order(angles) if order == "dose-symmetric" else numpy.arange(T)
    rng = numpy.random.default_rng(seed)
    slab = place_in_slab(xyz, shape, voxel_size, particles, slab_thickness, rng)
    rotations = quaternion_matrices(slab.quaternions)
    n = len(slab.centres)
    ice = slab.depth * voxel_size
    truth_b = optics.bfactor if truth_bfactor is None else float(truth_bfactor)
    clean = (coulomb_potential(xyz, z, slab.centres, rotations, shape, voxel_size, truth_b,
                               ice_potential, xp) if n else xp.zeros(shape))
    per_tilt = dose / T
    dose_before = numpy.empty(T)
    dose_before[acquisition] = per_tilt * numpy.arange(T)
    seeds = numpy.empty(T, numpy.int64)
    seeds[acquisition] = rng.integers(2 ** 63, size=T)
    n_even, n_odd = (frames + 1) // 2, frames // 2
    counts = xp.zeros((2, T, H, W), numpy.float32)
    contrast = xp.zeros((3, T, H, W), numpy.float32)      # even, odd, expected (no noise)
    for t in acquisition:
        if n:
            v = tilted_projection(xyz, z, slab.centres, rotations, angles[t], shape,
                                  voxel_size, optics.bfactor, ice_potential, xp)
        else:
            v = xp.zeros((H, W))
        if damage:
            q = exposure_filter((H, W), voxel_size, dose_before[t] + per_tilt / 2, xp)
            v = xp.fft.irfft2(xp.fft.rfft2(v) * q, s=(H, W))
        intensity = _tilt_intensity(v, voxel_size, optics, angles[t], ice, inelastic_mfp,
                                    defocus_gradient)
        movie = expose(intensity, voxel_size, per_tilt, frames, numpy.zeros((frames, 2)),
                       int(seeds[t]), xp)
        even, odd, _ = even_odd_sums(movie, xp=xp)
        # expected counts of all frames in the ice: dose, pixel area, zero-loss share
        blank = per_tilt * voxel_size ** 2 * (
            numpy.exp(-ice / numpy.cos(numpy.deg2rad(angles[t])) / inelastic_mfp)
            if inelastic_mfp else 1.0)
        counts[0, t], counts[1, t] = even, odd
        contrast[0, t] = even / (blank * n_even / frames) - 1
        contrast[1, t] = odd / (blank * n_odd / frames) - 1
        # the expectation of both halves' contrast: expected counts over blank, no draw
        contrast[2, t] = intensity * (per_tilt * voxel_size ** 2) / blank - 1
    halves = weighted_back_projection(contrast, angles, D)              # (3, D, H, W)
    full = (n_even * halves[0] + n_odd * halves[1]) / frames
    table = [{"z": float(c[0]), "row": float(c[1]), "column": float(c[2]), "qw": float(q[0]),
              "qx": float(q[1]), "qy": float(q[2]), "qz": float(q[3])}
             for c, q in zip(slab.centres, slab.quaternions)]
    params = {"shape": list(shape), "voxel_size_A": voxel_size, "angles_deg": angles.tolist(),
              "order": order, "acquisition": acquisition.tolist(),
              "dose_e_per_A2": dose, "dose_per_tilt_e_per_A2": per_tilt,
              "dose_before_tilt_e_per_A2": dose_before.tolist(), "frames_per_tilt": frames,
              "defocus_A": [optics.defocus] * T, "defocus_gradient": defocus_gradient,
              "damage": damage, "particles_requested": slab.requested, "particles": n,
              "particle_radius_A": slab.radius, "slab_thickness_A": slab.thickness,
              "ice_thickness_A": ice, "truth_bfactor_A2": truth_b,
              "ice_potential_V": ice_potential, "inelastic_mfp_A": inelastic_mfp,
              "optics": optics._asdict(), "seed": seed,
              "wavelength_A": electron_wavelength(optics.voltage),
              "reconstruction": "R-weighted back-projection (Radermacher 1988), linear "
                                "interpolation; image contrast units",
              "scattering_factors": "Peng et al. 1996, Acta Cryst. A52:257, Table 1",
              "radiation_damage": "Grant & Grigorieff 2015, eLife 4:e06980 (300 kV)"}
    volumes = [to_host(a).astype(numpy.float32)
               for a in (clean, halves[0], halves[1], full, counts[0], counts[1], halves[2])]
    return SimulatedTiltSeries(*volumes[:6], angles, acquisition, float(voxel_size), table,
                               params, expected=volumes[6])
