"""Checkpoints: one HDF5 file per model state, written atomically.

Layout (h5py):

    /weights/<name>     every parameter and buffer by name ("conv3.w", "bn1.running_mean")
    /adam/m/<name>, /adam/v/<name>   Adam's moments by parameter name (when saved)
    /average/<name>     the exponential moving average of the weights (``--ema``; when saved)
    attributes: step, epoch, adam_step, config (JSON: model and training settings),
                rng (JSON: the seed; batches are a pure function of seed and step, see
                ``cupyden.io.loader``), provenance (JSON), format = "cupyden-checkpoint-1"

A model file for ``cupyden-denoise`` is the same file (the Adam group is optional).
"""

import json
import os

import h5py
import numpy

from ..errors import InputError
from .atomic import atomic_hdf5

FORMAT = "cupyden-checkpoint-1"


def save_checkpoint(path, model_state, config, step=0, epoch=0, adam_state=None, rng=None,
                    provenance=None, average=None):
    """Write a checkpoint atomically: built in memory, written to a temporary file in the
    same folder, then renamed (``io.atomic.atomic_hdf5``).

    Parameters
    ----------
    path : str
    model_state : dict name -> numpy array
        ``Model.state()``.
    config : dict
        Must hold "model" (``Model.config()``); JSON-serialisable.
    step, epoch : int
    adam_state : dict or None
        ``Adam.state()``.
    rng, provenance : dict or None
        JSON-serialisable.
    average : dict name -> numpy array, or None
        The weights' moving average (``optim.ema.WeightAverage.named()``), for resuming.

    Raises
    ------
    InputError
        The folder is missing or not writable, or the disk is full (the temporary file is
        removed; an earlier checkpoint at ``path`` is kept).
    """
    with atomic_hdf5(path, in_memory=True) as f:      # HDF5 never meets a full disk
        f.attrs["format"] = FORMAT
        f.attrs["step"], f.attrs["epoch"] = int(step), int(epoch)
        f.attrs["config"] = json.dumps(config)
        f.attrs["rng"] = json.dumps(rng or {})
        f.attrs["provenance"] = json.dumps(provenance or {})
        for name, arr in model_state.items():
            f.create_dataset("weights/" + name, data=numpy.asarray(arr))
        if adam_state is not None:
            f.attrs["adam_step"] = int(adam_state["step"])
            for moment in ("m", "v"):
                for name, arr in adam_state[moment].items():
                    f.create_dataset("adam/%s/%s" % (moment, name), data=arr)
        for name, arr in (average or {}).items():
            f.create_dataset("average/" + name, data=arr)


def non_finite(state):
    """Where a model or optimizer state holds NaN or Inf, or None when it holds none.

    Parameters
    ----------
    state : dict
        name -> host array, or nested dicts of them (``{"m": {...}, "v": {...}}``).

    Returns
    -------
    str or None
        The first offending name, e.g. ``"v/conv3.w"``.
    """
    for name, value in state.items():
        if isinstance(value, dict):
            inner = non_finite(value)
            if inner is not None:
                return "%s/%s" % (name, inner)
        elif not numpy.isfinite(value).all():
            return name
    return None


def load_checkpoint(path):
    """Read a checkpoint.

    Returns
    -------
    dict with keys "weights" (name -> array), "config", "step", "epoch", "rng",
    "provenance", "adam" ({"step", "m", "v"}) or None, and "average" (name -> array: the
    weights' moving average) or None.

    Raises
    ------
    InputError
        Missing, unreadable, or not a cupyden checkpoint; weights, Adam moments, the
        weights' average or the float16 loss scale holding NaN or Inf (a run that diverged:
        neither resumed nor used to denoise).
    """
    if not os.path.isfile(path):
        raise InputError("%s: no such model or checkpoint file" % path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError("%s: not a readable HDF5 file (%s)" % (path, exc))
    with f:
        if f.attrs.get("format") != FORMAT:
            raise InputError("%s: not a cupyden checkpoint" % path)
        out = {"weights": {k: f["weights"][k][()] for k in f["weights"]},
               "config": json.loads(f.attrs["config"]),
               "step": int(f.attrs["step"]), "epoch": int(f.attrs["epoch"]),
               "rng": json.loads(f.attrs["rng"]),
               "provenance": json.loads(f.attrs["provenance"]), "adam": None,
               "average": ({k: f["average"][k][()] for k in f["average"]}
                           if "average" in f else None)}
        if "adam" in f:
            out["adam"] = {"step": int(f.attrs["adam_step"]),
                           "m": {k: f["adam/m"][k][()] for k in f["adam/m"]},
                           "v": {k: f["adam/v"][k][()] for k in f["adam/v"]}}
    state = {"weights": out["weights"]}
    if out["adam"]:
        state["adam"] = {k: out["adam"][k] for k in "mv"}
    if out["average"]:
        state["average"] = out["average"]
    bad = non_finite(state)
    scale = out["provenance"].get("loss_scale", {}).get("scale", 1.0)
    if bad is None and not numpy.isfinite(scale):
        bad = "the float16 loss scale"
    if bad is not None:
        raise InputError("%s: holds NaN or Inf values (%s): it comes from a run that "
                         "diverged; use an earlier checkpoint, or train again with a lower "
                         "--lr" % (path, bad))
    return out
