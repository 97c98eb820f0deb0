"""Recipes (cupyden/recipes.py): which one cupyden-train takes, and the options it gives.

The device decision is passed in (``gpu_problem``), so the GPU cases run on the CPU; the
last test runs the command on a real GPU when there is one.
"""

import importlib.util
import json
import os
import re

import numpy
import pytest
from docopt import docopt

from cupyden import backend, recipes
from cupyden.cli import train as train_cli
from cupyden.cli.common import given_options
from cupyden.errors import InputError
from cupyden.io.checkpoint import load_checkpoint, save_checkpoint
from cupyden.pipeline.train import RUN_OPTIONS, resolve_options

from conftest import write

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
GPU = lambda: None                                          # noqa: E731  a GPU with cuDNN
CPU = lambda: "the CPU"                                     # noqa: E731
#: The options of today's defaults on a micrograph from INPUT (before recipes existed).
TODAY = {"arch": "dncnn", "init": None, "normalize": "robust", "precision": "fp32",
         "patch_size": 64, "stride": 32, "batch_size": 16, "lr": 0.001, "resplit": False,
         "ema": 0.0, "lr_schedule": "constant", "warmup": 0, "val_every": 50,
         "val_patches": 256, "steps": 2000, "max_minutes": 0.0, "bin": 1}
TOPAZ = {"arch": "topaz", "init": "topaz:unet", "normalize": "meanstd", "precision": "fp16",
         "patch_size": 384, "stride": 128, "batch_size": 12, "lr": 0.0002, "resplit": True,
         "ema": 0.9995, "lr_schedule": "cosine", "warmup": 100, "val_every": 250,
         "val_patches": 64, "steps": 1000000, "max_minutes": 4.0, "bin": 1}
LENGTH = ("steps", "max_minutes")


@pytest.fixture
def topaz_weights(monkeypatch):
    """Topaz's pretrained weights count as installed (they are not on CI)."""
    monkeypatch.setattr(recipes, "weights_installed", lambda spec: True)


def options(argv, gpu_problem=GPU):
    """What cupyden-train resolves from ``argv``, the device decision given."""
    args = docopt(train_cli.__doc__, argv=argv)
    inputs, _, kw = train_cli._parse(args, given_options(train_cli.__doc__, argv))
    return resolve_options(inputs, gpu_problem=gpu_problem, resume=kw["resume"],
                           **{k: v for k, v in kw.items() if k not in RUN_OPTIONS})


def picked(o, keys=TODAY):
    return {k: o[k] for k in keys}


def test_the_cpu_keeps_todays_defaults():
    o = options(["mic.mrc"], CPU)
    assert o["recipe"] == "plain" and o["recipe_why"] == "the CPU"
    assert picked(o) == TODAY
    embedded = options([], CPU)
    assert embedded["recipe"] == "plain" and embedded["recipe_why"] == "the embedded default"
    assert picked(embedded) == dict(TODAY, steps=150, bin=4)
    # The Python API's default is plain: the device is never asked.
    def never():
        raise AssertionError("plain does not ask for the device")
    assert picked(resolve_options(["mic.mrc"], gpu_problem=never)) == TODAY


def test_the_usage_shows_the_plain_recipe_and_the_topaz_options():
    args = docopt(train_cli.__doc__, argv=[])
    for key, value in recipes.PLAIN.items():
        option = "--" + key.replace("_", "-")
        if value is None:
            assert args[option] in (None, "auto"), option
        elif isinstance(value, bool):
            assert args[option] is value, option
        else:
            assert type(value)(args[option]) == value, option
    text = " ".join(train_cli.__doc__.split())
    assert recipes.options_text("topaz-finetune") in text


def test_a_gpu_and_count_split_micrographs_take_the_k2_recipe(topaz_weights):
    o = options(["mic.mrc"])
    assert o["recipe"] == "topaz-finetune"
    assert o["recipe_why"] == ("a GPU and count-split micrographs; --recipe plain for "
                               "DnCNN-12/32")
    assert picked(o, TOPAZ) == TOPAZ
    assert picked(options(["mic.mrc", "--recipe", "plain"])) == TODAY
    assert picked(options(["--pairs", "movie", "m.mrcs"]), TOPAZ) == dict(TOPAZ, resplit=False)


def test_binned_pairs_leave_resplit_out(topaz_weights):
    o = options(["mic.mrc", "--bin", "2"])
    assert o["recipe"] == "topaz-finetune" and o["resplit"] is False and o["bin"] == 2
    assert "--resplit left out: it needs count-split pairs at --bin 1" in o["recipe_why"]
    with pytest.raises(InputError, match="--resplit draws new count splits"):
        options(["mic.mrc", "--bin", "2", "--resplit"])          # given: refused, as before


def test_half_micrographs_take_it_and_tomograms_do_not(tmp_path, topaz_weights):
    rng = numpy.random.default_rng(0)
    for name in ("a_EVN", "a_ODD"):
        write(tmp_path / (name + ".mrc"), rng.random((64, 64), numpy.float32))
        write(tmp_path / (name + "_vol.mrc"), rng.random((8, 16, 16), numpy.float32))
    mics = options(["--pairs", "halves", str(tmp_path / "a_EVN.mrc"), "--odd",
                    str(tmp_path / "a_ODD.mrc")])
    assert mics["recipe"] == "topaz-finetune" and mics["resplit"] is False
    assert mics["recipe_why"] == ("a GPU and half micrographs; --recipe plain for "
                                  "DnCNN-12/32; --resplit left out: it needs count-split "
                                  "pairs at --bin 1")
    vols = options(["--pairs", "halves", str(tmp_path / "a_EVN_vol.mrc"), "--odd",
                    str(tmp_path / "a_ODD_vol.mrc")])
    assert (vols["recipe"], vols["recipe_why"], vols["arch"]) == ("plain", "tomograms",
                                                                  "unet3d")
    with pytest.raises(InputError, match="use --recipe plain for tomograms"):
        options(["--recipe", "topaz-finetune", "--pairs", "halves",
                 str(tmp_path / "a_EVN_vol.mrc"), "--odd", str(tmp_path / "a_ODD_vol.mrc")])


@pytest.mark.parametrize("argv, why", [
    ([], "the embedded default"),
    (["--store", "patches.h5"], "a patch store, whose patch size is fixed"),
    (["--pairs", "f2fd", "tomo.mrc"], "--pairs f2fd"),
    (["--pairs", "gaussian", "clean.mrc"], "--pairs gaussian"),
    (["--pairs", "poisson", "clean.mrc"], "--pairs poisson"),
])
def test_other_data_keep_plain_on_a_gpu(argv, why, topaz_weights):
    o = options(argv)
    assert (o["recipe"], o["recipe_why"]) == ("plain", why)
    assert o["precision"] == "fp32" and o["batch_size"] == 16


def test_options_given_win_abbreviated_or_not(topaz_weights):
    o = options(["mic.mrc", "--lr-sc", "constant", "--batch", "8", "--pre", "tf32",
                 "--patch-size", "256", "--ema", "0"])
    assert o["recipe"] == "topaz-finetune"
    assert picked(o, TOPAZ) == dict(TOPAZ, lr_schedule="constant", batch_size=8,
                                    precision="tf32", patch_size=256, ema=0.0)
    # An --arch other than the recipe's: its --init (which fixes the architecture) goes.
    unet = options(["mic.mrc", "--arch", "unet"])
    assert (unet["arch"], unet["init"], unet["lr"]) == ("unet", None, 0.0002)
    assert "--init topaz:unet left out: --arch unet" in unet["recipe_why"]
    assert options(["mic.mrc", "--arch", "topaz"])["init"] == "topaz:unet"
    assert options(["mic.mrc", "--init", "run/model.h5"])["init"] == "run/model.h5"


def test_the_length_of_a_topaz_recipe(topaz_weights):
    assert picked(options(["mic.mrc"]), LENGTH) == {"steps": 1000000, "max_minutes": 4.0}
    assert picked(options(["mic.mrc", "--max-minutes", "10"]), LENGTH) == {
        "steps": 1000000, "max_minutes": 10.0}
    assert picked(options(["mic.mrc", "--steps", "500"]), LENGTH) == {
        "steps": 500, "max_minutes": 0.0}
    epochs = options(["mic.mrc", "--epochs", "3"])
    assert (epochs["epochs"], epochs["max_minutes"]) == (3.0, 0.0)
    assert picked(options(["mic.mrc", "--steps", "500", "--max-minutes", "2"]), LENGTH) == {
        "steps": 500, "max_minutes": 2.0}


def test_without_topaz_weights_auto_trains_topaz_from_scratch(monkeypatch):
    monkeypatch.setattr(recipes, "weights_installed", lambda spec: False)
    o = options(["mic.mrc"])
    assert o["recipe"] == "topaz-scratch" and "pip install topaz-em" in o["recipe_why"]
    assert picked(o, TOPAZ) == dict(TOPAZ, init=None, lr=0.001)
    assert options(["mic.mrc", "--init", "run/model.h5"])["recipe"] == "topaz-finetune"


def test_weights_installed_does_not_import_torch():
    import sys
    had_torch = "torch" in sys.modules
    installed = recipes.weights_installed("topaz:unet")
    if importlib.util.find_spec("topaz") is None:
        assert installed is False
    assert had_torch or "torch" not in sys.modules
    assert recipes.weights_installed(None) and recipes.weights_installed("run/model.h5")


def test_a_resumed_run_keeps_the_recipe_of_its_checkpoint(tmp_path):
    def never():
        raise AssertionError("a resumed run does not ask for the device")
    o = {"pairs": "count-split", "inputs": ["mic.mrc"], "store": None, "volumes": False,
         "embedded": False, "init": None}
    new, old = str(tmp_path / "new.h5"), str(tmp_path / "old.h5")
    state = {"w": numpy.zeros(3, numpy.float32)}
    save_checkpoint(new, state, {"model": {"arch": "topaz-unet"}, "recipe": "topaz-finetune"})
    save_checkpoint(old, state, {"model": {"arch": "dncnn"}})      # from before recipes
    assert recipes.choose("auto", o, never, new)[0] == "topaz-finetune"
    assert recipes.choose("auto", o, never, old)[0] == "plain"
    assert recipes.choose("plain", o, never, new)[0] == "plain"    # checked by check_resume


def test_unknown_recipe_and_fp16_on_the_cpu_are_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert train_cli.main(["--recipe", "best", "mic.mrc", "-o", out, "-d", "-1"]) == 2
    err = capsys.readouterr().err
    assert err == ("cupyden-train: error: --recipe must be one of auto, plain, "
                   "topaz-finetune, topaz-scratch, got 'best'\n")
    assert train_cli.main(["--recipe", "topaz-finetune", "mic.mrc", "-o", out, "-d", "-1",
                           "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == ("cupyden-train: error: --precision fp16 needs a GPU with cuDNN; the CPU "
                   "runs fp32\n")


def test_the_command_logs_and_records_its_recipe(tmp_path, capsys):
    counts = numpy.random.default_rng(3).poisson(30, (96, 96)).astype(numpy.float32)
    mic = write(tmp_path / "c.mrc", counts, 1.0)
    out = str(tmp_path / "o")
    opts = ["--dose", "30", mic, "-o", out, "--depth", "3", "--width", "4", "--patch-size",
            "16", "--stride", "8", "--batch-size", "4", "--val-every", "3", "-d", "-1",
            "--no-progress", "--val-fraction", "0.25", "--holdout-fraction", "0.25"]
    assert train_cli.main(opts + ["--steps", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "recipe plain (the CPU)"
    assert load_checkpoint(os.path.join(out, "model.h5"))["config"]["recipe"] == "plain"
    with open(os.path.join(out, "evaluation.json")) as f:
        assert json.load(f)["recipe"] == "plain"
    ck = os.path.join(out, "checkpoint.h5")
    assert train_cli.main(opts + ["--steps", "6", "--resume", ck]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "recipe plain (that of the checkpoint resumed, %s)" % ck)
    assert load_checkpoint(ck)["step"] == 6


def _k2_protocol():
    spec = importlib.util.spec_from_file_location(
        "k2_protocol", os.path.join(BENCHMARKS, "k2_protocol.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_k2_protocol_takes_the_library_recipes(topaz_weights):
    k2 = _k2_protocol()
    # Its string before recipes existed (benchmarks/k2_protocol.py at 394bbe5), run on the
    # options of that time (--recipe plain), resolves to what it resolves to now.
    before = ("--arch topaz --init topaz:unet --normalize meanstd --precision fp16 "
              "--patch-size 384 --stride 128 --batch-size 12 --lr 0.0002 --resplit "
              "--ema 0.9995 --lr-schedule cosine --warmup 100 --steps 1000000 "
              "--val-fraction 0.14 --holdout-fraction 0 --val-every 250 --val-patches 64")
    cmd = ["train_rows.mrc", "--pairs", "count-split", "--dose", "47.6", "--max-minutes", "4",
           "-d", "0", "-o", "out", "--no-progress"]
    now = options(cmd + k2.override(k2.RECIPES["topaz-finetune"].split(), []))
    then = options(cmd + ["--recipe", "plain"] + before.split())
    auto = options(cmd + k2.RECIPES["auto"].split())             # the command's own choice
    assert now["recipe"] == auto["recipe"] == "topaz-finetune"
    for o in (now, then, auto):
        del o["recipe"], o["recipe_why"]
    assert now == then == auto
    # The library's string with the protocol's options, and --extra replacing an option.
    assert k2.RECIPES["topaz-finetune"] == ("--recipe topaz-finetune %s %s" % (
        recipes.options_text("topaz-finetune"), k2.PROTOCOL))
    scratch = options(cmd + k2.override(k2.RECIPES["topaz-scratch"].split(),
                                        ["--lr", "0.0005"]))
    assert (scratch["recipe"], scratch["init"], scratch["lr"]) == ("topaz-scratch", None,
                                                                   0.0005)
    assert re.fullmatch(r"--recipe plain .*", k2.RECIPES["defaults"])


@pytest.mark.gpu
@pytest.mark.skipif(backend.gpu_count() == 0, reason="needs a GPU")
def test_on_a_gpu_the_command_trains_by_the_topaz_recipe(tmp_path, capsys):
    counts = numpy.random.default_rng(5).poisson(30, (512, 512)).astype(numpy.float32)
    mic = write(tmp_path / "c.mrc", counts, 1.0)
    out = str(tmp_path / "o")
    assert train_cli.main(["--dose", "30", mic, "-o", out, "--patch-size", "64", "--stride",
                           "64", "--batch-size", "2", "--steps", "2", "--val-every", "1",
                           "--val-patches", "2", "--no-progress"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    config = load_checkpoint(os.path.join(out, "model.h5"))["config"]
    if recipes.device_problem() is not None:                     # a GPU without cuDNN
        assert first.startswith("recipe plain (a GPU without cuDNN")
        return
    name = "topaz-finetune" if recipes.weights_installed("topaz:unet") else "topaz-scratch"
    assert first.startswith("recipe %s (a GPU and count-split micrographs" % name)
    assert config["recipe"] == name and config["model"]["arch"] == "topaz-unet"
    assert (config["precision"], config["ema"], config["resplit"], config["max_seconds"]) == (
        "fp16", 0.9995, True, 0.0)
