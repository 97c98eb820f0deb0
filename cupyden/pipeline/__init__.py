"""The library layer under the commands: the Python API.

``cupyden.load_model``, ``cupyden.denoise`` and ``cupyden.denoise_files`` (module
:mod:`cupyden.pipeline.denoise`) are re-exported here and, lazily, from ``cupyden``.
"""

from .denoise import BatchResult, DenoiseModel, Job, denoise, denoise_files, load_model

__all__ = ["BatchResult", "DenoiseModel", "Job", "denoise", "denoise_files", "load_model"]
