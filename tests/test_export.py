"""cupyden-export: named arrays, and the documented PyTorch mapping (issue: losses and
training options)."""

import json

import numpy
import pytest

from cupyden.cli import export
from cupyden.io.checkpoint import save_checkpoint
from cupyden.models import DnCNN, UNet


def _export(tmp_path, model):
    path = str(tmp_path / "m.h5")
    save_checkpoint(path, model.state(), {"model": model.config()})
    assert export.main([path, "--to", "npz"]) == 0
    return numpy.load(str(tmp_path / "m.npz")), json.load(open(str(tmp_path / "m.json")))


def test_export_npz_and_json(tmp_path):
    model = DnCNN(4, 8, seed=1)
    arrays, desc = _export(tmp_path, model)
    assert sorted(arrays.files) == sorted(model.state())
    assert desc["model"]["arch"] == "dncnn" and desc["receptive_field_px"] == 9
    assert desc["pytorch"]["conv1.w"] == "0.weight" and desc["pytorch"]["conv4.b"] == "6.bias"
    assert export.main([str(tmp_path / "m.h5"), "--to", "onnx"]) == 2


@pytest.mark.parametrize("arch", ["dncnn", "unet"])
def test_pytorch_mapping_gives_the_same_output(tmp_path, arch):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    if arch == "dncnn":
        model = DnCNN(5, 8, seed=2)
        net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                            *[m for _ in range(3) for m in (nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())],
                            nn.Conv2d(8, 1, 3, padding=1))

        def run(x):
            return x - net(x)
    else:
        model = UNet(base=4, seed=3)

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())
        net = nn.Module()
        net.enc1, net.enc2, net.enc3, net.bott = block(1, 4), block(4, 8), block(8, 16), block(16, 32)
        net.dec3, net.dec2, net.dec1 = block(48, 16), block(24, 8), block(12, 4)
        net.out = nn.Conv2d(4, 1, 1)
        F = nn.functional

        def run(x):
            e1 = net.enc1(x)
            e2 = net.enc2(F.max_pool2d(e1, 2))
            e3 = net.enc3(F.max_pool2d(e2, 2))
            b = net.bott(F.max_pool2d(e3, 2))
            d3 = net.dec3(torch.cat([F.interpolate(b, size=e3.shape[2:]), e3], 1))
            d2 = net.dec2(torch.cat([F.interpolate(d3, size=e2.shape[2:]), e2], 1))
            d1 = net.dec1(torch.cat([F.interpolate(d2, size=e1.shape[2:]), e1], 1))
            return net.out(d1)
    arrays, desc = _export(tmp_path, model)
    net.load_state_dict({desc["pytorch"][k]: torch.from_numpy(arrays[k]) for k in arrays.files})
    x = numpy.random.default_rng(0).standard_normal((2, 1, 16, 24)).astype(numpy.float32)
    with torch.no_grad():
        ref = run(torch.from_numpy(x)).numpy()
    ours = model.to(numpy, numpy.float32).eval().forward(x)
    assert numpy.abs(ours - ref).max() / numpy.abs(ref).max() < 1e-5
