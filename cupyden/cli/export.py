"""cupyden-export: write a trained model as plain named arrays plus a JSON description.

Usage:
  cupyden-export MODEL [--to FORMAT] [-o PATH]
  cupyden-export -h | --help

Options:
  --to FORMAT   npz (the only format) [default: npz]
  -o PATH       Output path without extension (its folder is created); default:
                MODEL's path without .h5
  -h, --help    Show this help.

Writes PATH.npz (one array per parameter and buffer, float32, cupyden names such as
"conv3.w") and PATH.json: the architecture ({"arch": ..., hyper-parameters}), the training
settings, the receptive field, and "pytorch": a map from each cupyden name to the
``state_dict`` key of the PyTorch module documented below (null for the other
architectures, e.g. F2Fd's U-Net), so the weights load with
``module.load_state_dict({pytorch[k]: torch.from_numpy(v) for k, v in npz.items()})``.

PyTorch modules the names map to (documentation; cupyden never imports torch):

  DnCNN (depth D, width W):  torch.nn.Sequential(Conv2d(1, W, 3, padding=1), ReLU(),
      [Conv2d(W, W, 3, padding=1), ReLU()] x (D - 2), Conv2d(W, 1, 3, padding=1));
      output = input - module(input). "conv{i}.w" -> "{2 (i - 1)}.weight", ".b" -> ".bias".
  U-Net (base B): a Module with attributes enc1, enc2, enc3, bott, dec3, dec2, dec1, each
      Sequential(Conv2d(cin, cout, 3, padding=1), ReLU(), Conv2d(cout, cout, 3, padding=1),
      ReLU()), and out = Conv2d(B, 1, 1); forward as in cupyden/models/unet.py (max-pool 2,
      nearest upsampling, skips concatenated [upsampled, skip]). "enc1.conv1.w" ->
      "enc1.0.weight", "enc1.conv2.w" -> "enc1.2.weight", "out.w" -> "out.weight".
"""

import json
import os

import numpy

from ..io.atomic import atomic_output
from ..io.checkpoint import load_checkpoint
from ..models import build_model
from .common import as_choice, output_folder, run


#: Architectures whose names map to the PyTorch modules documented above; the others are
#: exported with "pytorch": null.
PYTORCH_MAPPED = ("dncnn", "unet")


def pytorch_name(arch, name):
    """The PyTorch state_dict key for a cupyden parameter name (see the module docstring)."""
    layer, kind = name.rsplit(".", 1)
    suffix = {"w": "weight", "b": "bias"}[kind]
    if arch == "dncnn":
        i = int(layer[len("conv"):])
        return "%d.%s" % (2 * (i - 1), suffix)
    if arch == "unet":
        if layer == "out":
            return "out." + suffix
        block, conv = layer.split(".")
        return "%s.%d.%s" % (block, 2 * (int(conv[len("conv"):]) - 1), suffix)
    raise ValueError("no PyTorch mapping for %r" % arch)


def _body(args):
    as_choice(args, "--to", ("npz",))
    ck = load_checkpoint(args["MODEL"])
    model = build_model(ck["config"]["model"])
    model.load_state(ck["weights"])
    state = model.state()
    arch = ck["config"]["model"]["arch"]
    base = args["-o"] or os.path.splitext(args["MODEL"])[0]
    output_folder(os.path.dirname(os.path.abspath(base)))
    description = {"model": ck["config"]["model"], "training": ck["config"],
                   "receptive_field_px": model.receptive_field,
                   "arrays": {k: list(v.shape) for k, v in state.items()},
                   "pytorch": ({k: pytorch_name(arch, k) for k in state}
                               if arch in PYTORCH_MAPPED else None)}
    with atomic_output(base + ".npz", ".npz") as tmp, open(tmp, "wb") as f:
        numpy.savez(f, **{k: v.astype(numpy.float32) for k, v in state.items()})
    with atomic_output(base + ".json", ".json") as tmp, open(tmp, "w") as f:
        json.dump(description, f, indent=1)
    print("wrote %s.npz and %s.json (%d arrays)" % (base, base, len(state)))


def main(argv=None):
    """Entry point of cupyden-export; returns the exit code."""
    return run(__doc__, argv, _body, "cupyden-export")
