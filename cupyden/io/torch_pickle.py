"""Read PyTorch state dicts (``torch.save(model.state_dict())``) without PyTorch.

Two formats exist (``torch/serialization.py``):

* legacy (PyTorch < 1.6, Topaz-Denoise's ``.sav`` files): five pickles in a row (magic
  number 0x1950a86a20f9469cfc6c, protocol version 1001, system info, the object, the
  list of storage keys), then for each key the storage as an int64 element count and the
  raw little-endian data;
* zip (PyTorch >= 1.6): ``<name>/data.pkl`` holds the object, ``<name>/data/<key>`` each
  storage's raw data.

In both, the object pickle refers to storages by persistent id ("storage", storage
type, key, device, element count) and rebuilds tensors with
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``. The unpickler
below resolves only those names and ``collections.OrderedDict``; anything else (code
in the pickle) is refused, so a hostile file cannot run code.
"""

import collections
import os
import pickle
import struct
import zipfile

import numpy

from ..errors import InputError

MAGIC = 0x1950a86a20f9469cfc6c

_DTYPES = {"FloatStorage": numpy.float32, "DoubleStorage": numpy.float64,
           "HalfStorage": numpy.float16, "LongStorage": numpy.int64,
           "IntStorage": numpy.int32, "ShortStorage": numpy.int16,
           "CharStorage": numpy.int8, "ByteStorage": numpy.uint8, "BoolStorage": numpy.bool_}


class _Storage:
    """A storage met in the pickle; its data arrive later (legacy) or from the zip."""

    def __init__(self, dtype, key, numel):
        self.dtype, self.key, self.numel, self.data = dtype, key, numel, None


class _Tensor:
    """A tensor waiting for its storage's data."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self):
        data = self.storage.data
        item = data.itemsize
        view = numpy.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
        return numpy.array(view)


def _rebuild_tensor(storage, offset, size, stride, *rest):
    return _Tensor(storage, offset, size, stride)


class _StorageType:
    def __init__(self, name):
        self.dtype = _DTYPES[name]


class _Unpickler(pickle.Unpickler):
    """Resolves only tensors, storages and OrderedDict."""

    def __init__(self, f, path):
        super().__init__(f)
        self.path, self.storages = path, {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise InputError("%s: not a plain PyTorch state dict (it refers to %s.%s)"
                         % (self.path, module, name))

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise InputError("%s: unsupported PyTorch persistent id %r" % (self.path, pid[:1]))
        storage_type, key, _device, numel = pid[1:5]
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, key, numel)
        return self.storages[key]


def read_state_dict(path):
    """A PyTorch state dict as NumPy arrays.

    Parameters
    ----------
    path : str
        A ``torch.save`` file (legacy or zip format) of a dict of tensors.

    Returns
    -------
    dict of str -> numpy array (the tensors' dtypes and shapes; C-contiguous copies)

    Raises
    ------
    InputError
        Missing or truncated file, or a pickle that is not a plain state dict.
    """
    if not os.path.isfile(path):
        raise InputError("%s: no such file" % path)
    try:
        if zipfile.is_zipfile(path):
            obj, storages = _read_zip(path)
        else:
            obj, storages = _read_legacy(path)
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, KeyError) as exc:
        raise InputError("%s: not a readable PyTorch file (%s)" % (path, exc))
    if not isinstance(obj, dict):
        raise InputError("%s: holds a %s, not a state dict" % (path, type(obj).__name__))
    return {k: v.array() if isinstance(v, _Tensor) else v for k, v in obj.items()
            if isinstance(v, _Tensor)}


def _read_legacy(path):
    with open(path, "rb") as f:
        if pickle.load(f) != MAGIC:
            raise ValueError("bad magic number")
        if pickle.load(f) != 1001:
            raise ValueError("unknown protocol version")
        pickle.load(f)                                     # system info (a plain dict)
        unpickler = _Unpickler(f, path)
        obj = unpickler.load()
        keys = pickle.load(f)
        for key in keys:
            st = unpickler.storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            raw = f.read(numel * numpy.dtype(st.dtype).itemsize)
            if numel != st.numel or len(raw) != numel * numpy.dtype(st.dtype).itemsize:
                raise ValueError("truncated storage %s" % key)
            st.data = numpy.frombuffer(raw, numpy.dtype(st.dtype).newbyteorder("<"))
    return obj, unpickler.storages


def _read_zip(path):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
        root = pkl[:-len("data.pkl")]
        with z.open(pkl) as f:
            unpickler = _Unpickler(f, path)
            obj = unpickler.load()
        for key, st in unpickler.storages.items():
            raw = z.read(root + "data/" + str(key))
            st.data = numpy.frombuffer(raw, numpy.dtype(st.dtype).newbyteorder("<"))[:st.numel]
    return obj, unpickler.storages


def topaz_pretrained(filename):
    """Path of a pretrained model file of the installed Topaz-Denoise (``topaz-em``).

    The package is located without being imported (it would import PyTorch).

    Parameters
    ----------
    filename : str
        e.g. ``unet_L2_v0.2.2.sav`` (in ``topaz/pretrained/denoise``).

    Raises
    ------
    InputError
        topaz-em is not installed, or lacks the file.
    """
    import importlib.util
    spec = importlib.util.find_spec("topaz")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("Topaz-Denoise models need the topaz-em package (pip install "
                         "topaz-em); cupyden ships none of its weights")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "pretrained", "denoise", filename)
        if os.path.isfile(path):
            return path
    raise InputError("the installed topaz-em has no pretrained/denoise/%s" % filename)
