"""One CPU matrix product that accumulates and lets other threads run: C += A @ B.

``numpy.matmul`` releases the GIL but cannot accumulate into its output (BLAS's beta), so a
sum of products needs a temporary and an extra pass per term; ``scipy.linalg.blas.sgemm``
accumulates but holds the GIL, so two Python threads cannot multiply at once (measured:
two threads took as long as one doing both products). SciPy's public Cython BLAS
(``scipy.linalg.cython_blas``) exports the Fortran ``sgemm``/``dgemm`` of the BLAS that
SciPy links; called through ``ctypes`` with raw pointers it does both, and takes any row
stride (offset views into a buffer, no copies). The capsule-to-pointer step is the one
Numba documents for calling ``cython_blas`` from compiled code.

Only row-major (C-order) operands are passed here; BLAS is column-major, so
``C (M, N) += A (M, K) @ B (K, N)`` is issued as ``C^T = B^T A^T``: a column-major product
with m = N, n = M, k = K and leading dimensions the row strides.
"""

import ctypes
import threading

import numpy

_REF = ctypes.c_void_p   # every Fortran argument is a pointer


def _capsule_pointer(capsule):
    """The C function pointer inside a Cython ``__pyx_capi__`` capsule."""
    name = ctypes.pythonapi.PyCapsule_GetName
    name.restype, name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get(capsule, name(capsule))


def _load():
    from scipy.linalg import cython_blas
    proto = ctypes.CFUNCTYPE(None, *[_REF] * 13)   # ctypes releases the GIL during the call
    return {numpy.dtype(numpy.float32): proto(_capsule_pointer(cython_blas.__pyx_capi__["sgemm"])),
            numpy.dtype(numpy.float64): proto(_capsule_pointer(cython_blas.__pyx_capi__["dgemm"]))}


_GEMM = _load()
_ARGS = threading.local()   # per-thread argument holders (ctypes passes them by reference)


class _Args:
    def __init__(self):
        self.transa, self.transb = ctypes.c_char(b"N"), ctypes.c_char(b"N")
        self.ints = [ctypes.c_int() for _ in range(6)]          # m, n, k, lda, ldb, ldc
        self.scalars = {numpy.dtype(numpy.float32): (ctypes.c_float(1), ctypes.c_float()),
                        numpy.dtype(numpy.float64): (ctypes.c_double(1), ctypes.c_double())}
        self.refs = [ctypes.byref(a) for a in [self.transa, self.transb] + self.ints]
        self.scalar_refs = {k: (ctypes.byref(a), ctypes.byref(b))
                            for k, (a, b) in self.scalars.items()}


def gemm(dtype, M, N, K, a, lda, b, ldb, c, ldc, beta=1.0, trans_a=False):
    """C = A @ B + beta * C on raw row-major buffers, without the GIL.

    Parameters
    ----------
    dtype : numpy.dtype
        float32 or float64 (every operand has it).
    M, N, K : int
        C is (M, N); A is (M, K), or (K, M) read transposed when ``trans_a``; B is (K, N).
    a, b, c : int
        Addresses of the first element (``arr.ctypes.data + offset * itemsize``).
    lda, ldb, ldc : int
        Row strides in elements (>= the row lengths).
    beta : float
        1 accumulates into C, 0 overwrites it.
    trans_a : bool
        Read A from a (K, M) row-major buffer (A = that buffer's transpose).

    Notes
    -----
    The caller keeps the arrays alive and in bounds: no checks are made here.
    """
    args = getattr(_ARGS, "v", None)
    if args is None:
        args = _ARGS.v = _Args()
    dtype = numpy.dtype(dtype)
    # column-major: C^T (N, M) = B^T (N, K) @ A^T (K, M); B's buffer is the first operand
    m, n, k, ld1, ld2, ld3 = args.ints
    m.value, n.value, k.value = N, M, K
    ld1.value, ld2.value, ld3.value = ldb, lda, ldc
    args.transa.value = b"N"
    args.transb.value = b"T" if trans_a else b"N"
    alpha, beta_ = args.scalars[dtype]
    beta_.value = beta
    r = args.refs
    ralpha, rbeta = args.scalar_refs[dtype]
    _GEMM[dtype](r[0], r[1], r[2], r[3], r[4], ralpha, b, r[5], a, r[6], rbeta, c, r[7])
