"""cupyden: a from-scratch NumPy/CuPy deep-learning engine for cryo-EM denoising.

Every layer has an explicit forward and backward pass (see ``cupyden.functional``),
checked against finite differences (``cupyden.gradcheck``); the same code runs on a GPU
through CuPy and on a CPU through NumPy (``cupyden.backend``).
"""

__version__ = "0.1.0"
