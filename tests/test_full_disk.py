"""A full disk while HDF5 files are written (issue 20, item 2): exit code 2, one line, no
temporary file left, earlier outputs intact, no crash.

The disk is a 2 MiB tmpfs mounted for the test, so these tests run as root only (CI's
container is root) and skip elsewhere. Each command runs in a child process: before the
fix a full disk ended in a segmentation fault, which would take pytest down with it.
"""

import os
import shutil
import subprocess
import sys

import mrcfile
import numpy
import pytest

from cupyden.io.checkpoint import load_checkpoint

SMALL = ["--depth", "3", "--patch-size", "16", "--stride", "8", "--val-fraction", "0.25",
         "--holdout-fraction", "0", "--batch-size", "4", "--val-every", "2", "-d", "-1",
         "--no-progress"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A folder on a 2 MiB tmpfs (skips unless this process may mount one)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip("cannot mount a tmpfs here: %s" % r.stderr.strip())
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def cli(command, args, patch_check=False):
    """Run ``cupyden.cli.<command>.main(args)`` in a child process: (exit code, stderr)."""
    code = ["import sys"]
    if patch_check:             # another process fills the disk between check and write
        code += ["import cupyden.io.atomic as a, cupyden.io.store as s",
                 "a.check_space = s.check_space = lambda f, n: None"]
    code += ["from cupyden.cli import %s as c" % command, "sys.exit(c.main(sys.argv[1:]))"]
    r = subprocess.run([sys.executable, "-c", "; ".join(code)] + [str(a) for a in args],
                       capture_output=True, text=True, cwd=os.path.dirname(__file__))
    return r.returncode, r.stderr


def image(path, shape, seed=0):
    with mrcfile.new(str(path)) as m:
        m.set_data(numpy.random.default_rng(seed).standard_normal(shape).astype(numpy.float32))
    return str(path)


def fill(folder, leave):
    """Fill the file system of ``folder`` until ``leave`` bytes are free."""
    st = os.statvfs(folder)
    with open(os.path.join(folder, "filler"), "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def only_one_line(err, command):
    return err.startswith("%s: error: " % command) and err.count("\n") == 1


@pytest.mark.parametrize("patch_check", [False, True], ids=["checked", "hdf5-fails"])
def test_patch_store_on_a_full_disk(tmp_path, tiny_disk, patch_check):
    mic = image(tmp_path / "mic.mrc", (400, 400))         # ~7 MB of patches, 2 MiB disk
    rc, err = cli("train", ["--pairs", "gaussian", mic, "-o", tiny_disk, "--steps", "2",
                            "--width", "4"] + SMALL,
                  patch_check)
    assert rc == 2 and only_one_line(err, "cupyden-train"), err
    assert "No space left on device" in err and "patches.h5" in err
    assert os.listdir(tiny_disk) == []                     # no temporary file left


@pytest.mark.parametrize("patch_check", [False, True], ids=["checked", "hdf5-fails"])
def test_checkpoint_on_a_full_disk_keeps_the_earlier_one(tmp_path, tiny_disk, patch_check):
    mic = image(tmp_path / "mic.mrc", (64, 64))
    opts = ["--pairs", "gaussian", mic, "-o", tiny_disk, "--width", "32"] + SMALL
    assert cli("train", opts + ["--steps", "2"]) == (0, "")
    before = {n: open(os.path.join(tiny_disk, n), "rb").read() for n in ("model.h5", "checkpoint.h5")}
    fill(tiny_disk, len(before["model.h5"]) // 2)          # room for no model, no checkpoint
    rc, err = cli("train", opts + ["--steps", "4", "--resume",
                                   os.path.join(tiny_disk, "checkpoint.h5")], patch_check)
    assert rc == 2 and only_one_line(err, "cupyden-train"), err
    assert "No space left on device" in err
    assert sorted(os.listdir(tiny_disk)) == ["checkpoint.h5", "filler", "history.csv",
                                             "loss_curve.png", "model.h5", "patches.h5"]
    for name, data in before.items():                      # untouched, and still loads
        assert open(os.path.join(tiny_disk, name), "rb").read() == data
    assert load_checkpoint(os.path.join(tiny_disk, "checkpoint.h5"))["step"] == 2
