"""GPU-only code: CuPy ElementwiseKernels (built through ``cupyden.backend``).

Imported lazily, only on the GPU path; CPU-only installs never load this package.
"""
