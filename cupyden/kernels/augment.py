"""A batch gathered from patches held on the GPU, with its augmentation, in one kernel
(``io.loader.Loader`` when the training patches fit in device memory).

Output pixel (j, r, c) of the batch reads source patch ``meta[j]`` of the resident arrays
at the pixel that :func:`cupyden.io.patches.augment` (the NumPy reference and the
documentation) moves to (r, c): dihedral transform ``op = meta[B + j]`` (``numpy.rot90`` by
op % 4 quarter turns in the (row, column) plane, then a flip of the columns when op >= 4),
and the two views exchanged when ``meta[2 B + j]`` is 1. For a rotation by k quarter
turns, out[r, c] = m[r, c], m[c, P-1-r], m[P-1-r, P-1-c], m[P-1-c, r] for k = 0..3;
the flip first replaces c by P-1-c. Only copies: the batch equals the reference's bit for
bit.
"""

from ..backend import elementwise_kernel

gather_augment_kernel = elementwise_kernel(
    "raw float32 ax, raw float32 ay, raw int64 meta, int64 P, int64 B",
    "float32 ox, float32 oy",
    """
    const long long plane = P * P;
    const long long j = i / plane, rc = i % plane;
    long long r = rc / P, c = rc % P;
    const long long op = meta[B + j];
    if (op >= 4) c = P - 1 - c;
    long long sr = r, sc = c;
    switch (op % 4) {
        case 1: sr = c; sc = P - 1 - r; break;
        case 2: sr = P - 1 - r; sc = P - 1 - c; break;
        case 3: sr = P - 1 - c; sc = r; break;
    }
    const long long s = meta[j] * plane + sr * P + sc;
    if (meta[2 * B + j]) { ox = ay[s]; oy = ax[s]; } else { ox = ax[s]; oy = ay[s]; }
    """,
    "cupyden_gather_augment")


def gather_augment(all_x, all_y, meta, out_x, out_y):
    """out_x, out_y = the augmented batch of patches ``meta[:B]`` (see the module).

    Parameters
    ----------
    all_x, all_y : cupy float32 (n, 1, P, P), C-contiguous
        The resident patch pairs.
    meta : cupy int64 (3 B,)
        Source indices, dihedral ops (0-7) and view exchanges (0/1) of the B samples
        (:func:`cupyden.io.patches.augment_draw`).
    out_x, out_y : cupy float32 (B, 1, P, P), C-contiguous
        Written in place, on the current stream.
    """
    B, P = out_x.shape[0], out_x.shape[-1]
    gather_augment_kernel(all_x, all_y, meta, P, B, out_x, out_y)
