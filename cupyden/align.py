"""2-D alignment of particle images: in-plane rotation and shift, and aligned class averages.

Convention. An image is its reference turned by ``angle`` (degrees, counter-clockwise in
the (x, y) = (column, row) frame) about the box centre c = (box // 2, box // 2) and moved
by ``shift`` = (x, y) px:

    image(c + r) = reference(c + R(-angle) (r - shift)),   R(a) = [[cos a, -sin a],
                                                                  [sin a,  cos a]]

(:func:`cupyden.simulate.particle_stack` makes images this way). :func:`transform` applies
(angle, shift); :func:`inverse` gives the pair that undoes it.

Alignment to a reference (:func:`align`), after Penczek, Radermacher & Frank (1992),
Ultramicroscopy 40:33-53 (rotational alignment in polar coordinates, the angular
correlation by FFT along the angle axis; translation by cross-correlation):

1. Rotation. For each candidate centre c + t (integer t with |t| <= ``max_shift``) the
   image is resampled on rings of radius rho = 1 .. P and A angles theta_a = 2 pi a / A
   (bilinear). The rotational cross-correlation with the reference's rings about c,

       C_t(phi) = sum_rho rho sum_a img_t(rho, theta_a) ref(rho, theta_a - phi),

   is one inverse FFT along the angle axis: C_t = IFFT_a[ sum_rho rho F_t(rho, m)
   conj(G(rho, m)) ] (F, G the FFTs of the rings along theta). The best (t, phi) over all
   candidates gives the angle; a parabola through the peak and its neighbours refines it.
2. Shift. The reference turned by the angle is cross-correlated with the image by FFT;
   the peak within ``max_shift`` + 1 px, refined by a parabola per axis, is the shift.

Class averages (:func:`align_classes`), as in 2-D classification by iterative alignment
to class averages (Penczek et al. 1992; RELION, Scheres 2012; cryoSPARC, Punjani et al.
2017, who do the same with likelihood weights instead of the best match): a class's first
reference is built by adding its members one by one, each aligned to the running average
(reference-free alignment, Penczek et al. 1992); then every member is aligned to the
average and the average recomputed, a few times.

Everything runs on the images' array module (NumPy or CuPy).
"""

import numpy

from .backend import get_array_module, to_host


def inverse(angles, shifts):
    """The (angle, shift) that undoes (``angles``, ``shifts``) (see the module docstring).

    If image = T(angle, t) reference then reference = T(-angle, -R(-angle) t) image.

    Parameters
    ----------
    angles : float array (N,), degrees
    shifts : float array (N, 2), (x, y) px

    Returns
    -------
    angles, shifts : float64 numpy arrays (N,), (N, 2)
    """
    a = numpy.deg2rad(numpy.asarray(angles, numpy.float64))
    t = numpy.asarray(shifts, numpy.float64)
    c, s = numpy.cos(a), numpy.sin(a)
    back = numpy.stack([c * t[:, 0] + s * t[:, 1], -s * t[:, 0] + c * t[:, 1]], -1)  # R(-a) t
    return -numpy.asarray(angles, numpy.float64), -back


def _bilinear(images, y, x):
    """Bilinear samples of images (N, H, W) at rows ``y`` and columns ``x`` (N, ...);
    0 outside the image.

    The images are padded with a zero border (one pixel before, two after) and the
    coordinates clipped to [-1, H] x [-1, W]: every corner then lies inside the padded
    image and points outside read zeros, with no masks."""
    xp = get_array_module(images)
    N, H, W = images.shape
    padded = xp.zeros((N, H + 3, W + 3), images.dtype)
    padded[:, 1:H + 1, 1:W + 1] = images
    flat = padded.reshape(N, -1)                                   # (N, (H + 3) (W + 3))
    y, x = xp.clip(y, -1, H), xp.clip(x, -1, W)
    y0, x0 = xp.floor(y), xp.floor(x)
    fy, fx = (y - y0).astype(images.dtype), (x - x0).astype(images.dtype)
    # (N, M): flat index of the top-left corner in the padded image, per image
    index = ((y0.astype(numpy.int64) + 1) * (W + 3) + x0.astype(numpy.int64) + 1).reshape(N, -1)
    fy, fx = fy.reshape(N, -1), fx.reshape(N, -1)
    top = xp.take_along_axis(flat, index, 1) * (1 - fx) + xp.take_along_axis(flat, index + 1, 1) * fx
    below = index + (W + 3)
    bottom = xp.take_along_axis(flat, below, 1) * (1 - fx) + xp.take_along_axis(flat, below + 1, 1) * fx
    return (top * (1 - fy) + bottom * fy).reshape(y.shape)


def transform(images, angles, shifts):
    """Turn each image by its angle about the box centre, then move it by its shift.

    out(c + r) = in(c + R(-angle)(r - shift)), bilinear interpolation, 0 outside.

    Parameters
    ----------
    images : float array (N, H, W) (NumPy or CuPy)
    angles : float array (N,), degrees
    shifts : float array (N, 2), (x, y) px

    Returns
    -------
    array like ``images`` (N, H, W)
    """
    xp = get_array_module(images)
    N, H, W = images.shape
    a = xp.asarray(numpy.deg2rad(numpy.asarray(angles, numpy.float64)))[:, None, None]
    t = xp.asarray(numpy.asarray(shifts, numpy.float64))
    ry = xp.arange(H, dtype=numpy.float64)[None, :, None] - H // 2 - t[:, 1, None, None]
    rx = xp.arange(W, dtype=numpy.float64)[None, None, :] - W // 2 - t[:, 0, None, None]
    c, s = xp.cos(a), xp.sin(a)
    # R(-a) (rx, ry) = (c rx + s ry, -s rx + c ry): where each output pixel comes from
    x = c * rx + s * ry + W // 2                                   # (N, H, W)
    y = -s * rx + c * ry + H // 2
    return _bilinear(images, y, x)


def transform_loop(images, angles, shifts):
    """Loop reference of :func:`transform` (NumPy, one pixel at a time)."""
    images = numpy.asarray(images, numpy.float64)
    N, H, W = images.shape
    out = numpy.zeros_like(images)
    for n in range(N):
        a = numpy.deg2rad(angles[n])
        for i in range(H):
            for j in range(W):
                rx, ry = j - W // 2 - shifts[n][0], i - H // 2 - shifts[n][1]
                x = numpy.cos(a) * rx + numpy.sin(a) * ry + W // 2
                y = -numpy.sin(a) * rx + numpy.cos(a) * ry + H // 2
                i0, j0 = int(numpy.floor(y)), int(numpy.floor(x))
                for ii, wy in ((i0, 1 - (y - i0)), (i0 + 1, y - i0)):
                    for jj, wx in ((j0, 1 - (x - j0)), (j0 + 1, x - j0)):
                        if 0 <= ii < H and 0 <= jj < W:
                            out[n, i, j] += wy * wx * images[n, ii, jj]
    return out


def _rings(box, max_shift):
    """Ring radii 1 .. P (px) that stay inside the box from every candidate centre, and
    the number of angles A (a power of two with arc steps under 2 px at radius P)."""
    P = max(2, box // 2 - int(numpy.ceil(max_shift)) - 1)
    A = 1 << int(numpy.ceil(numpy.log2(numpy.pi * P)))
    return P, A


def polar(images, centres, P, A):
    """Images resampled (bilinear) on rings about given centres.

    The sample positions are the same for every image, so their corner indices and
    weights are computed once: each image is then gathered at S P A x 4 corners.

    Parameters
    ----------
    images : float array (N, H, W)
    centres : float array (S, 2)
        (x, y) of each centre, px from the box centre (S candidate centres).
    P, A : int
        Radii 1 .. P px; angles 2 pi a / A, a = 0 .. A - 1.

    Returns
    -------
    array (N, S, P, A) of the images' module and dtype; 0 where a ring leaves the image
    """
    xp = get_array_module(images)
    N, H, W = images.shape
    cen = numpy.asarray(centres, numpy.float64)
    S = len(cen)
    rho = numpy.arange(1, P + 1, dtype=numpy.float64)[:, None]                  # (P, 1)
    theta = numpy.arange(A, dtype=numpy.float64)[None, :] * (2 * numpy.pi / A)  # (1, A)
    # (S, P, A): sample positions in pixel coordinates, clipped as in _bilinear
    x = numpy.clip(W // 2 + cen[:, 0, None, None] + rho * numpy.cos(theta), -1, W)
    y = numpy.clip(H // 2 + cen[:, 1, None, None] + rho * numpy.sin(theta), -1, H)
    x0, y0 = numpy.floor(x), numpy.floor(y)
    fx, fy = (x - x0).ravel(), (y - y0).ravel()
    top_left = ((y0 + 1) * (W + 3) + x0 + 1).astype(numpy.int64).ravel()
    # (S P A, 4): the four corners in the padded image (one pixel before, two after) and
    # their weights
    index = xp.asarray(numpy.stack([top_left, top_left + 1, top_left + W + 3,
                                    top_left + W + 4], -1))
    weight = xp.asarray(numpy.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx),
                                     fy * fx], -1).astype(images.dtype))
    padded = xp.zeros((N, H + 3, W + 3), images.dtype)
    padded[:, 1:H + 1, 1:W + 1] = images
    samples = padded.reshape(N, -1)[:, index]                                  # (N, S P A, 4)
    return (samples * weight).sum(axis=-1).reshape(N, S, P, A)


def rotational_correlation(rings, ref_rings):
    """C(phi_a) = sum_rho rho sum_b rings(rho, theta_b) ref(rho, theta_b - phi_a), by FFT
    along the angle axis (module docstring, step 1).

    Parameters
    ----------
    rings : float array (..., P, A)
    ref_rings : float array (..., P, A), broadcastable against ``rings``

    Returns
    -------
    float array (..., A): correlation at phi_a = 2 pi a / A
    """
    xp = get_array_module(rings)
    P, A = rings.shape[-2:]
    rho = xp.arange(1, P + 1, dtype=numpy.float64)[:, None]
    f = xp.fft.rfft(rings, axis=-1) * xp.conj(xp.fft.rfft(ref_rings, axis=-1))   # (..., P, A/2+1)
    return xp.fft.irfft((f * rho).sum(axis=-2), n=A, axis=-1)


def rotational_correlation_loop(rings, ref_rings):
    """Loop reference of :func:`rotational_correlation` for (P, A) rings."""
    P, A = rings.shape
    out = numpy.zeros(A)
    for a in range(A):
        for p in range(P):
            for b in range(A):
                out[a] += (p + 1) * rings[p, b] * ref_rings[p, (b - a) % A]
    return out


def _parabola(left, centre, right):
    """Offset in (-0.5, 0.5) of the vertex of the parabola through three samples."""
    xp = get_array_module(centre)
    den = left - 2 * centre + right
    safe = xp.where(xp.abs(den) > 1e-30, den, 1.0)
    return xp.where(xp.abs(den) > 1e-30, xp.clip(0.5 * (left - right) / safe, -0.5, 0.5), 0.0)


def _candidate_shifts(max_shift):
    """Integer (x, y) offsets within the disc of radius ``max_shift``: (S, 2)."""
    m = int(numpy.floor(max_shift))
    g = numpy.arange(-m, m + 1)
    t = numpy.stack(numpy.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    return t[(t ** 2).sum(1) <= max_shift ** 2 + 1e-9].astype(numpy.float64)


def align(images, references, which=None, max_shift=4.0, chunk=64, rotate=True):
    """In-plane angle and shift of each image against its reference (module docstring).

    Parameters
    ----------
    images : float array (N, H, W) (NumPy or CuPy)
    references : float array (K, H, W), same module
    which : int array (N,) or None
        Reference of each image (None: every image against reference 0).
    max_shift : float
        Largest shift searched, px.
    chunk : int
        Images per batch (memory: chunk x S x P x A samples, S the candidate centres).
    rotate : bool
        Search the in-plane angle (step 1); False: the angle is 0 and only the shift is
        searched (particles known not to be turned).

    Returns
    -------
    angles : float64 numpy array (N,)
        Degrees in [0, 360): image ~ :func:`transform` (reference, angle, shift).
    shifts : float64 numpy array (N, 2)
        (x, y) px.
    scores : float64 numpy array (N,)
        Normalised cross-correlation of the image with the turned and moved reference.
    """
    xp = get_array_module(images)
    N, H, W = images.shape
    which = numpy.zeros(N, int) if which is None else numpy.asarray(to_host(which), int)
    # correlations of the fluctuations: an offset would favour overlapping the box
    images = images - images.mean(axis=(1, 2), keepdims=True)
    references = references - references.mean(axis=(1, 2), keepdims=True)
    P, A = _rings(min(H, W), max_shift)
    cand = _candidate_shifts(max_shift)                                     # (S, 2)
    ref_rings = polar(references, numpy.zeros((1, 2)), P, A)[:, 0] if rotate else None  # (K, P, A)
    angles, shifts, scores = numpy.zeros(N), numpy.zeros((N, 2)), numpy.zeros(N)
    for s in range(0, N, chunk):
        x = images[s:s + chunk]
        n = len(x)
        w = which[s:s + n]
        phi = numpy.zeros(n)
        if rotate:
            c = rotational_correlation(polar(x, cand, P, A), ref_rings[xp.asarray(w)][:, None])
            c = c.reshape(n, -1)                                            # (n, S * A)
            best = c.argmax(axis=1)
            a = best % A
            rows = xp.arange(n)
            centre = c[rows, best]
            base = best - a                                                 # start of its row
            left, right = c[rows, base + (a - 1) % A], c[rows, base + (a + 1) % A]
            phi = (to_host(a + _parabola(left, centre, right)) * 360.0 / A) % 360.0
        turned = transform(references[xp.asarray(w)], phi, numpy.zeros((n, 2)))
        t, score = _translation(x, turned, max_shift + 1)
        angles[s:s + n], shifts[s:s + n], scores[s:s + n] = phi, t, score
    return angles, shifts, scores


def _translation(images, references, radius):
    """Shift (x, y) of each image against its own reference by FFT cross-correlation:
    the peak of IFFT(F_img conj(F_ref)) within ``radius`` px, refined by a parabola per
    axis; and the normalised cross-correlation at the integer peak."""
    xp = get_array_module(images)
    n, H, W = images.shape
    cc = xp.fft.irfft2(xp.fft.rfft2(images) * xp.conj(xp.fft.rfft2(references)), s=(H, W))
    dy = (xp.arange(H) + H // 2) % H - H // 2                     # signed lag of each row
    dx = (xp.arange(W) + W // 2) % W - W // 2
    inside = (dy[:, None] ** 2 + dx[None, :] ** 2) <= radius ** 2
    masked = xp.where(inside, cc, -xp.inf).reshape(n, -1)
    best = masked.argmax(axis=1)
    i, j = best // W, best % W
    rows = xp.arange(n)
    peak = cc[rows, i, j]
    oy = _parabola(cc[rows, (i - 1) % H, j], peak, cc[rows, (i + 1) % H, j])
    ox = _parabola(cc[rows, i, (j - 1) % W], peak, cc[rows, i, (j + 1) % W])
    t = xp.stack([dx[j] + ox, dy[i] + oy], -1)
    norm = xp.sqrt((images ** 2).sum(axis=(1, 2)) * (references ** 2).sum(axis=(1, 2))) + 1e-30
    return to_host(t).astype(numpy.float64), to_host(peak / norm).astype(numpy.float64)


def align_classes(images, labels, k, iterations=3, max_shift=4.0, seed=0, first=16,
                  rotate=True):
    """Aligned class averages by iterative alignment of each class's members to its
    average (module docstring).

    Parameters
    ----------
    images : float array (N, H, W) (NumPy or CuPy)
    labels : int array (N,)
        Class of each image, 0 .. k - 1.
    k : int
    iterations : int
        Rounds of (align every member to the average, average again).
    max_shift : float
        Largest shift searched, px.
    seed : int
        Order in which members build the first reference.
    first : int
        Members added one by one to build the first reference.
    rotate : bool
        Search in-plane angles (False: shifts only, every angle 0; :func:`align`).

    Returns
    -------
    averages : float32 numpy array (k, H, W)
        Mean of each class's aligned members (zeros for an empty class).
    angles : float64 numpy array (N,)
        Degrees: image ~ transform(average, angle, shift).
    shifts : float64 numpy array (N, 2)
        (x, y) px.
    """
    xp = get_array_module(images)
    labels = numpy.asarray(to_host(labels), int)
    N, H, W = images.shape
    rng = numpy.random.default_rng(seed)
    refs = xp.zeros((k, H, W), images.dtype)
    for c in range(k):
        members = rng.permutation(numpy.flatnonzero(labels == c))[:first]
        if not len(members):
            continue
        total = images[int(members[0])].copy()
        for m, idx in enumerate(members[1:], start=1):
            a, t, _ = align(images[int(idx)][None], (total / m)[None], None, max_shift,
                            rotate=rotate)
            ia, it = inverse(a, t)
            total += transform(images[int(idx)][None], ia, it)[0]
        refs[c] = total / len(members)
    angles, shifts = numpy.zeros(N), numpy.zeros((N, 2))
    for _ in range(iterations):
        angles, shifts, _ = align(images, refs, labels, max_shift, rotate=rotate)
        refs = average_aligned(images, labels, k, angles, shifts)
    return to_host(refs).astype(numpy.float32), angles, shifts


def average_aligned(images, labels, k, angles, shifts, chunk=256):
    """Mean of each class's images with their (angle, shift) undone.

    Parameters
    ----------
    images : float array (N, H, W) (NumPy or CuPy)
    labels : int array (N,)
    k : int
    angles, shifts : float arrays (N,), (N, 2)
        From :func:`align` or :func:`align_classes` (degrees; (x, y) px).

    Returns
    -------
    array (k, H, W) of the images' module and dtype (zeros for an empty class)
    """
    xp = get_array_module(images)
    labels = numpy.asarray(to_host(labels), int)
    N, H, W = images.shape
    total = xp.zeros((k, H, W), numpy.float64)
    ia, it = inverse(angles, shifts)
    for s in range(0, N, chunk):
        back = transform(images[s:s + chunk], ia[s:s + chunk], it[s:s + chunk])
        onehot = xp.asarray((labels[s:s + chunk, None] == numpy.arange(k)).astype(numpy.float64))
        total += xp.einsum("nk,nhw->khw", onehot, back)
    counts = numpy.maximum(numpy.bincount(labels, minlength=k), 1)
    return (total / xp.asarray(counts, numpy.float64)[:, None, None]).astype(images.dtype)
