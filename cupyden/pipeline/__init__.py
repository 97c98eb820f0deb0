"""The library layer under the commands: from files to a trained model and back.

``pipeline.train``: sources -> pair views -> a patch store (streaming) -> training, on one
device or one process per GPU (``cupyden.distributed``); :func:`cupyden.train` is its
Python API.
"""
