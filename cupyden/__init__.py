"""cupyden: a from-scratch NumPy/CuPy deep-learning engine for cryo-EM denoising.

Every layer has an explicit forward and backward pass (see ``cupyden.functional``),
checked against finite differences (``cupyden.gradcheck``); the same code runs on a GPU
through CuPy and on a CPU through NumPy (``cupyden.backend``).

The Python API (:mod:`cupyden.pipeline`), imported on first use so that ``import cupyden``
stays cheap::

    import cupyden
    model, history = cupyden.train("mics/*.mrc", "run1", pairs="count-split")
    model = cupyden.load_model("run1/model.h5", device=0)
    clean = cupyden.denoise(model, image)              # NumPy or CuPy array, any size
    cupyden.denoise_files(model, "mics/*.mrc", "denoised")
"""

__version__ = "0.1.0"

#: Public names -> the module that defines them (imported when first asked for, PEP 562).
_API = {"load_model": "cupyden.pipeline.denoise", "denoise": "cupyden.pipeline.denoise",
        "denoise_files": "cupyden.pipeline.denoise", "train": "cupyden.pipeline.train"}


def __getattr__(name):
    if name in _API:
        import importlib
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError("module 'cupyden' has no attribute %r" % name)


def __dir__():
    return sorted(list(globals()) + list(_API))
