"""cupyden: a from-scratch NumPy/CuPy deep-learning engine for cryo-EM denoising.

Every layer has an explicit forward and backward pass (see ``cupyden.functional``),
checked against finite differences (``cupyden.gradcheck``); the same code runs on a GPU
through CuPy and on a CPU through NumPy (``cupyden.backend``).

The Python API, imported when first used (``import cupyden`` stays cheap):

- ``cupyden.train(inputs, output_dir, pairs=..., arch=..., ...) -> (model, history)``:
  what ``cupyden-train`` does (``cupyden.pipeline.train.train``).
"""

import sys
import types

__version__ = "0.1.0"

_API = {"train": "cupyden.pipeline.train"}


def __getattr__(name):
    """Import the public API lazily (PEP 562)."""
    if name not in _API:
        raise AttributeError("module 'cupyden' has no attribute %r" % name)
    import importlib

    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """The package's module type (Python's documented way to customise a module,
    "Customizing module attribute access"): the training loop's module is also named
    ``cupyden.train`` (``from cupyden.train import fit``), and loading it would bind the
    package attribute ``train`` to that module; the binding is refused, so ``cupyden.train``
    stays the API function whatever was imported first."""

    def __setattr__(self, name, value):
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
