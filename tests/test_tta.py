"""Test-time augmentation (self-ensemble over flips and rotations; Lim et al. 2017, EDSR+):
``infer.denoise_array(tta=)`` and ``cupyden.denoise`` (issue 15; the files and the command:
tests/test_pipeline_denoise.py)."""

import numpy
import pytest

import cupyden
from cupyden import backend
from cupyden.errors import InputError
from cupyden.infer import denoise_array, halo_for
from cupyden.io.patches import normalization
from cupyden.models import DnCNN, UNet3d
from cupyden.pipeline.denoise import DenoiseModel

from conftest import rel, smooth


def whole(model, image, norm):
    """One untiled pass over the image mirrored by the halo (what the tiler equals)."""
    h = halo_for(model)
    padded = numpy.pad(norm.apply(image), h, mode="reflect")
    return norm.invert(model.forward(padded[None, None])[0, 0, h:-h, h:-h])


def symmetric_dncnn():
    """A DnCNN whose every 3x3 kernel is the mean of its 8 rotations and reflections: each
    convolution (with its zero padding) and so the network commute with the dihedral group
    D4, so test-time augmentation cannot change its output."""
    model = DnCNN(depth=4, width=4, seed=5)
    state = model.state()
    for name, w in state.items():
        if w.ndim == 4:
            d4 = [numpy.rot90(v, k, axes=(2, 3)) for v in (w, w.swapaxes(2, 3)) for k in range(4)]
            state[name] = numpy.mean(d4, axis=0)
    model.load_state(state)
    return model


def test_an_equivariant_network_is_unchanged_by_tta(xp):
    model = symmetric_dncnn().to(xp, numpy.float32).eval()
    image = smooth((70, 90), 2) + 30
    plain, stats1 = denoise_array(model, image, xp, tile=32)
    for tta in (2, 4, 8):
        got, stats = denoise_array(model, image, xp, tile=32, tta=tta)
        assert rel(got, plain) < 1e-5, tta
        assert stats["tta"] == tta and stats["tiles"] == tta * stats1["tiles"]


def test_tta_is_the_mean_of_the_transformed_back_outputs():
    """A network without symmetry: tta 2 = (f(x) + flip(f(flip(x)))) / 2, and tta 8 = the
    mean over the 4 rotations of x and of x transposed, each rotated back (NumPy's rot90,
    not the tiler's transforms)."""
    model = DnCNN(depth=4, width=4, seed=1).to(numpy, numpy.float32).eval()
    image = smooth((70, 90), 3) + 30
    norm = normalization(image)
    f = lambda x: whole(model, x, norm)  # noqa: E731
    two = (f(image) + f(image[:, ::-1])[:, ::-1]) / 2
    got2, _ = denoise_array(model, image, numpy, tile=32, tta=2)
    assert rel(got2, two) < 1e-5
    eight = numpy.mean([numpy.rot90(f(numpy.rot90(image, k)), -k) for k in range(4)] +
                       [numpy.rot90(f(numpy.rot90(image.T, k)), -k).T for k in range(4)], axis=0)
    got8, _ = denoise_array(model, image, numpy, tile=32, tta=8)
    assert rel(got8, eight) < 1e-5
    assert rel(got8, f(image)) > 1e-3                       # and it does change the output


def test_tta_refuses_volumes_and_other_counts():
    model = UNet3d(base=2, depth=1, seed=3).to(numpy, numpy.float32).eval()
    volume = numpy.random.default_rng(0).standard_normal((8, 8, 8)).astype(numpy.float32)
    with pytest.raises(ValueError, match="missing wedge"):
        denoise_array(model, volume, numpy, tta=2)
    with pytest.raises(ValueError, match="tta must be one of"):
        denoise_array(DnCNN(2, 2).to(numpy).eval(), volume[0], numpy, tta=3)
    cpu = backend.select_device("-1")
    for net, config in ((model, {"model": {}}),
                        (DnCNN(2, 2).to(numpy).eval(), {"model": {}, "pairs": "f2fd"})):
        dm = DenoiseModel(net, config, cpu, "fp32", "model.h5")
        with pytest.raises(InputError, match="tta 2"):
            cupyden.denoise(dm, volume if dm.ndim == 3 else volume[0], tta=2)
