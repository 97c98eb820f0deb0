"""Topaz-Denoise's networks in cupyden: the state-dict reader and the topology.

The fixture ``tests/data/topaz_unet_tiny.*`` is a small UDenoiseNet (nf 4, base width 5,
top width 3, PyTorch's default random initialisation; no Topaz weights) saved by PyTorch
2.13 in both formats (legacy ``.sav`` as Topaz's files are, and zip ``.pt``), and the
outputs of Topaz-Denoise 0.3.20's own ``UDenoiseNet.forward`` on two inputs (``.npz``).
"""

import os
import pickle

import numpy
import pytest

from cupyden.backend import to_device
from cupyden.cli import denoise
from cupyden.errors import InputError
from cupyden.infer import denoise_array
from cupyden.io.mrc import write_mrc
from cupyden.io.patches import normalization
from cupyden.io.torch_pickle import read_state_dict
from cupyden.models import TopazUNet, build_model
from cupyden.models.topaz import from_topaz_state

from conftest import rel

DATA = os.path.join(os.path.dirname(__file__), "data")


def tiny(pad, xp=numpy):
    model = TopazUNet(nf=4, base_width=5, top_width=3, pad=pad).to(xp, numpy.float32).eval()
    model.load_state(from_topaz_state(read_state_dict(os.path.join(DATA, "topaz_unet_tiny.sav"))))
    return model


def test_legacy_and_zip_state_dicts_read_the_same():
    a = read_state_dict(os.path.join(DATA, "topaz_unet_tiny.sav"))
    b = read_state_dict(os.path.join(DATA, "topaz_unet_tiny.pt"))
    assert a.keys() == b.keys() and len(a) == 34
    assert a["enc1.0.weight"].shape == (4, 1, 5, 5) and a["enc1.0.weight"].dtype == numpy.float32
    assert all(numpy.array_equal(a[k], b[k]) for k in a)


def test_output_equals_topaz_on_any_size_unpadded(xp):
    ref = numpy.load(os.path.join(DATA, "topaz_unet_tiny.npz"))
    y = tiny(False, xp).forward(to_device(ref["x_odd"], xp))     # 50 x 70: odd coarse levels
    assert rel(y, ref["y_odd"]) < 1e-5


def test_padded_output_equals_topaz_on_multiples_of_32(xp):
    ref = numpy.load(os.path.join(DATA, "topaz_unet_tiny.npz"))
    y = tiny(True, xp).forward(to_device(ref["x_multiple"], xp))  # 64 x 96
    assert rel(y, ref["y_multiple"]) < 1e-5


def test_padded_topaz_unet_tiles_equal_the_whole_image():
    model = tiny(True)
    rng = numpy.random.default_rng(0)
    image = rng.standard_normal((200, 230)).astype(numpy.float32) + 5
    tiled, stats = denoise_array(model, image, numpy, tile=64, batch_size=2)
    assert stats["halo"] % 32 == 0 and stats["tiles"] == 4 * 4
    norm = normalization(image)                  # one pass over the image mirrored by the halo
    h = stats["halo"]
    padded = numpy.pad(norm.apply(image), h, mode="reflect")
    whole = norm.invert(model.forward(padded[None, None])[0, 0, h:-h, h:-h])
    assert rel(tiled, whole) < 1e-5


def test_config_round_trip_and_parameter_names():
    model = TopazUNet(depth=3, seed=2)
    again = build_model(model.config())
    assert again.depth == 3 and model.state().keys() == again.state().keys()
    assert "dec3.0.w" in model.state() and "dec1.4.b" in model.state()
    assert model.receptive_field == 82 and TopazUNet().receptive_field == 298


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Hostile:
        def __reduce__(self):
            return (os.system, ("echo pwned > %s" % (tmp_path / "ran"),))

    path = str(tmp_path / "evil.sav")
    with open(path, "wb") as f:
        for obj in (0x1950a86a20f9469cfc6c, 1001, {}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump({"w": Hostile()}, f, protocol=2)
    with pytest.raises(InputError, match="not a plain PyTorch state dict"):
        read_state_dict(path)
    assert not os.path.exists(tmp_path / "ran")


def test_truncated_file_is_refused(tmp_path):
    data = open(os.path.join(DATA, "topaz_unet_tiny.sav"), "rb").read()
    path = tmp_path / "cut.sav"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError):
        read_state_dict(str(path))


def test_denoise_cli_says_topaz_is_needed(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "topaz" else real(name, *a))
    mic = str(tmp_path / "x.mrc")
    write_mrc(mic, numpy.random.default_rng(0).random((40, 40)), 1.0)
    out = str(tmp_path / "out")
    assert denoise.main(["topaz:unet", mic, "-o", out, "-d", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "topaz-em" in err
    assert denoise.main(["topaz:nonesuch", mic, "-o", out, "-d", "-1"]) == 2
    assert "unknown Topaz model" in capsys.readouterr().err


def test_gradient_of_the_arch_topaz_training_model():
    """The model ``cupyden-train --arch topaz`` trains (Topaz's UDenoiseNet, 48 features,
    5 poolings), whole, in float64: directional test of the gradient of an MSE against a
    target, over the input and every parameter at once."""
    from cupyden import gradcheck
    from cupyden.losses import Objective
    rng = numpy.random.default_rng(0)
    model = build_model({"arch": "topaz-unet", "seed": 0})
    case = gradcheck.layer_case("arch topaz", model, [rng.standard_normal((1, 1, 32, 32))],
                                numpy)
    target = rng.standard_normal((1, 1, 32, 32))
    mse = Objective([("mse", 1.0)])
    state = {}

    def forward(xs):
        loss, state["cache"] = mse.forward(case.forward(xs), target)
        return loss.reshape(1)

    def backward(dy):
        return case.backward(mse.backward(state["cache"]) * dy.reshape(()))

    err = gradcheck.directional_check(case._replace(forward=forward, backward=backward))
    assert err < gradcheck.TOLERANCE, err


def test_initial_weights_of_a_topaz_model_need_topaz(monkeypatch):
    """--init topaz:NAME: an unknown name and a missing topaz-em are one-line errors."""
    import importlib.util
    from cupyden.training import initial_weights
    with pytest.raises(InputError, match="unknown Topaz model"):
        initial_weights("topaz:nope")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "topaz" else real(name, *a))
    with pytest.raises(InputError, match="topaz-em"):
        initial_weights("topaz:unet")
