"""The library layer under the commands: from files to a trained model and back.

- :mod:`cupyden.pipeline.train`: sources -> pair views -> a patch store (streaming) ->
  training, on one device or one process per GPU (:mod:`cupyden.distributed`).
- :mod:`cupyden.pipeline.denoise`: a model from a file, one array denoised, and many files
  denoised in a streaming read -> device -> write pipeline (one GPU, or several through
  Dask: :mod:`cupyden.pipeline.dask_workers`).

The Python API re-exports one function of each, lazily, from the package itself:
``cupyden.train``, ``cupyden.load_model``, ``cupyden.denoise``, ``cupyden.denoise_files``.
"""
