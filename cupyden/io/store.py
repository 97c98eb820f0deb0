"""The HDF5 patch store: training and validation patch pairs on disk, any size.

Layout (h5py):

    /train/input, /train/target   (n, 1, P, P) float32 or float16, one chunk per patch;
                                  (n, 1, P, P, P) for subvolumes of tomograms
    /val/input,   /val/target     likewise
    /micrographs                  one JSON string per micrograph, in the order its patches
                                  were appended: its name, shape, normalisation statistic
                                  (loc, scale), the pair source's numbers (e.g. the count
                                  split's scale) and its patches' index ranges per split
    attributes: patch (px), ndim (2 or 3), dtype, pixel_size (Å/px), bin, normalisation
    method, the pair source and the input files (provenance)

The store is built once (written to a temporary file in the target folder, renamed when
complete) and reused by later runs with ``--store``. Datasets are resizable, so patches
are appended micrograph by micrograph and the whole set never needs to fit in memory.
"""

import json
import os
import sys

import h5py
import numpy

from ..errors import InputError
from .atomic import atomic_hdf5, check_space

SPLITS = ("train", "val")


class PatchStoreWriter:
    """Build a patch store; use as a context manager.

    Parameters
    ----------
    path : str
        Final path; written as a temporary file beside it, renamed on success, removed
        on failure (a full disk gives an InputError, and no temporary file is left).
    patch : int
        Patch side in pixels.
    dtype : "float32" or "float16"
    attrs : dict
        JSON-serialisable provenance, stored as attributes.
    ndim : int
        2 for micrograph patches (P, P), 3 for subvolumes (P, P, P).
    """

    def __init__(self, path, patch, dtype="float32", attrs=None, ndim=2):
        self.path, self.patch, self.dtype, self.ndim = path, patch, numpy.dtype(dtype), ndim
        self._atomic = atomic_hdf5(path)
        self.f = self._atomic.__enter__()
        try:
            self._create(attrs)
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise

    def _create(self, attrs):
        """The four empty resizable datasets (one chunk per patch) and the attributes."""
        sample = (1,) + (self.patch,) * self.ndim            # (1, P, P) or (1, P, P, P)
        for split in SPLITS:
            for role in ("input", "target"):
                self.f.create_dataset("%s/%s" % (split, role), shape=(0,) + sample,
                                      maxshape=(None,) + sample, dtype=self.dtype,
                                      chunks=(1,) + sample)
        self.f.create_dataset("micrographs", shape=(0,), maxshape=(None,),
                              dtype=h5py.string_dtype(), chunks=(256,))
        self.f.attrs["patch"] = self.patch
        self.f.attrs["ndim"] = self.ndim
        self.f.attrs["dtype"] = self.dtype.name
        self.set_attrs(attrs or {})

    def set_attrs(self, attrs):
        """Store JSON-serialisable provenance as attributes (replacing same-named ones)."""
        for k, v in attrs.items():
            self.f.attrs[k] = json.dumps(v)

    def append(self, split, inputs, targets):
        """Append patch pairs (n, 1, P, P) (or (n, 1, P, P, P)) to ``split`` ("train" or "val").

        Raises
        ------
        OSError
            ENOSPC before anything is written when the disk lacks room for them
            (``io.atomic.check_space``); the writer's exit turns it into an InputError.
        """
        check_space(self.f, 2 * len(inputs) * inputs[0].size * self.dtype.itemsize)
        for role, arr in (("input", inputs), ("target", targets)):
            ds = self.f["%s/%s" % (split, role)]
            n = ds.shape[0]
            ds.resize(n + len(arr), axis=0)
            ds[n:] = arr.astype(self.dtype)

    def size(self, split):
        """Patch pairs appended to ``split`` so far."""
        return self.f["%s/input" % split].shape[0]

    def add_micrograph(self, info):
        """Record one micrograph's statistics (a JSON-serialisable dict) in /micrographs."""
        ds = self.f["micrographs"]
        ds.resize(ds.shape[0] + 1, axis=0)
        ds[-1] = json.dumps(info)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        """Close and rename the store, or on an error (a full disk included) remove it;
        errors writing it become one InputError (io.atomic.atomic_hdf5)."""
        self.f = None
        return self._atomic.__exit__(kind, value, tb)


class PatchStore:
    """Read access to a patch store.

    Parameters
    ----------
    path : str

    Raises
    ------
    InputError
        Missing file, not HDF5, or not a cupyden patch store.
    """

    def __init__(self, path):
        if not os.path.isfile(path):
            raise InputError("%s: no such patch store" % path)
        try:
            self.f = h5py.File(path, "r")
        except OSError as exc:
            raise InputError("%s: not a readable HDF5 file (%s)" % (path, exc))
        if "train/input" not in self.f:
            raise InputError("%s: not a cupyden patch store (no /train/input)" % path)
        self.path = path
        self.patch = int(self.f.attrs["patch"])
        #: (1, P, P) or (1, P, P, P): one sample's shape
        self.sample_shape = tuple(self.f["train/input"].shape[1:])
        self.ndim = len(self.sample_shape) - 1

    def attr(self, key, default=None):
        """A JSON attribute, decoded."""
        return json.loads(self.f.attrs[key]) if key in self.f.attrs else default

    def size(self, split):
        """Number of patch pairs in ``split``."""
        return self.f["%s/input" % split].shape[0]

    def micrographs(self):
        """Per-micrograph statistics (list of dicts, in append order; [] for stores built
        before they were recorded)."""
        if "micrographs" not in self.f:
            return []
        return [json.loads(v) for v in self.f["micrographs"].asstr()[()]]

    def count_units(self, split="train"):
        """Each patch's normalisation, when its two views are count-split halves that can
        be split anew (``io.pairs.resplit``): (loc, scale) float64 arrays (size(split),),
        counts = value * scale + loc. None for any other store: other pair sources, or
        halves binned after the split (--bin > 1: no longer counts)."""
        mics = self.micrographs()
        if self.attr("pairs") != "count-split" or self.attr("bin", 1) != 1 or not mics:
            return None
        loc, scale = numpy.zeros(self.size(split)), numpy.zeros(self.size(split))
        for m in mics:
            r0, r1 = m[split]
            loc[r0:r1], scale[r0:r1] = m["loc"], m["scale"]
        return loc, scale

    def read(self, split, indices, out_x=None, out_y=None):
        """Patch pairs at ``indices`` (any order), as float32 (n, 1, P, P) arrays
        ((n, 1, P, P, P) for a store of subvolumes).

        One slice read per patch (one HDF5 chunk each): h5py's list indexing took 50-140 ms
        for 16 patches of 256 px, holding the GIL, against ~1.5 ms this way. Writes into
        ``out_x``/``out_y`` when given.
        """
        shape = (len(indices),) + self.sample_shape
        x = numpy.empty(shape, numpy.float32) if out_x is None else out_x
        y = numpy.empty(shape, numpy.float32) if out_y is None else out_y
        dx, dy = self.f["%s/input" % split], self.f["%s/target" % split]
        for j, i in enumerate(indices):
            x[j] = dx[int(i)]
            y[j] = dy[int(i)]
        return x, y

    def loader(self, batch_size, xp, seed=0, start=0, rank=0, world=1, resplit=False):
        """The double-buffered training :class:`~cupyden.io.loader.Loader` over this store
        (``rank``'s share of each global batch of ``batch_size`` when ``world`` > 1; a new
        count split of every batch with ``resplit``)."""
        from .loader import Loader
        return Loader(self, batch_size, xp, seed=seed, start=start, rank=rank, world=world,
                      resplit=resplit)

    def close(self):
        self.f.close()
