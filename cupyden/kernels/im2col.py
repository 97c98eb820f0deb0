"""im2col and col2im as CuPy ElementwiseKernels (one thread per output element).

The index arithmetic is the NumPy loop of ``cupyden.functional.conv.im2col`` written per
element: column element (c, kh, kw, n, r, ow) reads xpad[n0 + n, c, (r0 + r) * S + kh,
ow * S + kw]. col2im gathers instead of scattering: each padded-input element sums the
column entries that read it, so no atomics are needed and the result is deterministic.
"""

from ..backend import elementwise_kernel

im2col_kernel = elementwise_kernel(
    "raw T xpad, int32 C, int32 Hp, int32 Wp, int32 KH, int32 KW, int32 S, "
    "int32 nb, int32 R, int32 OW, int32 n0, int32 r0",
    "T col",
    """
    ptrdiff_t t = i;
    const int ow = t % OW; t /= OW;
    const int r = t % R; t /= R;
    const int n = t % nb; t /= nb;
    const int kw = t % KW; t /= KW;
    const int kh = t % KH; t /= KH;
    const ptrdiff_t c = t;
    const ptrdiff_t row = (ptrdiff_t)(r0 + r) * S + kh;
    col = xpad[(((ptrdiff_t)(n0 + n) * C + c) * Hp + row) * Wp + (ptrdiff_t)ow * S + kw];
    """,
    "cupyden_im2col")

col2im_add_kernel = elementwise_kernel(
    "raw T dcol, int32 C, int32 Hp, int32 Wp, int32 KH, int32 KW, int32 S, "
    "int32 nb, int32 R, int32 OW, int32 n0, int32 r0, int32 h0, int32 HH",
    "raw T dxpad",
    """
    // one thread per element of dxpad[n0:n0+nb, :, h0:h0+HH, :]
    ptrdiff_t t = i;
    const int wp = t % Wp; t /= Wp;
    const int hp = h0 + (int)(t % HH); t /= HH;
    const int c = t % C; t /= C;
    const int n = t;
    T acc = 0;
    for (int kh = 0; kh < KH; ++kh) {
        const int a = hp - kh;                 // = oh * S for the rows that read hp
        if (a < 0 || a % S) continue;
        const int r = a / S - r0;
        if (r < 0 || r >= R) continue;
        for (int kw = 0; kw < KW; ++kw) {
            const int bcol = wp - kw;          // = ow * S
            if (bcol < 0 || bcol % S) continue;
            const int ow = bcol / S;
            if (ow >= OW) continue;
            const ptrdiff_t k = ((ptrdiff_t)c * KH + kh) * KW + kw;
            acc += dcol[((k * nb + n) * R + r) * OW + ow];
        }
    }
    dxpad[(((ptrdiff_t)(n0 + n) * C + c) * Hp + hp) * Wp + wp] += acc;
    """,
    "cupyden_col2im_add")
