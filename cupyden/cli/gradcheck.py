"""cupyden-gradcheck: finite-difference checks of every op, loss and model, in float64.

Usage:
  cupyden-gradcheck [options]
  cupyden-gradcheck -h | --help

Options:
  -d, --device N   GPU number, -1 for the CPU, or auto (first GPU if any); when not
                   given, the environment variable CUPYDEN_DEVICE, else auto.
  --threads N      CPU threads for cupyden's kernels and BLAS; auto = the CPUs this
                   process may use (affinity, cgroup quota), or OMP_NUM_THREADS or
                   OPENBLAS_NUM_THREADS when set [default: auto]
  --tier TIER      elementwise, directional or both [default: both]
  --only TEXT      Check only the cases whose name contains TEXT.
  --seed N         Seed of the inputs and directions [default: 0]
  --conv PATH      GPU convolutions: auto (cuDNN when usable), cudnn, im2col, or both
                   (every case once per path) [default: auto]
  -h, --help       Show this help.

Prints one row per case and tier: name, tier, relative error, OK or FAIL (OK when the
relative error is below 1e-6). Exit code 0 when every row is OK, 1 on any FAIL, 2 on bad
options. The tiers are described in cupyden/gradcheck.py.
"""

from .. import backend, gradcheck
from ..errors import InputError
from ..functional.conv import gpu_conv
from ..functional.conv_cudnn import usable
from .common import as_choice, as_int, run


def _body(args):
    device = backend.select_device(args["--device"])
    tier = as_choice(args, "--tier", ("elementwise", "directional", "both"))
    seed = as_int(args, "--seed", 0)
    tiers = ["elementwise", "directional"] if tier == "both" else [tier]
    conv = as_choice(args, "--conv", ("auto", "cudnn", "im2col", "both"))
    paths = ["im2col", "cudnn"] if conv == "both" else [conv]
    if not device.is_gpu:
        paths = ["cpu"]
    elif "cudnn" in paths:
        try:
            with gpu_conv("cudnn"):
                usable(device.xp.zeros((1, 1, 2, 2), "float32"))
        except RuntimeError as exc:
            raise InputError(str(exc))
    print("device: %s, float64, tolerance %.0e" % (device.name, gradcheck.TOLERANCE))
    failed = 0
    for path in paths:
        with gpu_conv("auto" if path == "cpu" else path):
            for case in gradcheck.all_cases(device.xp, seed):
                if args["--only"] and args["--only"] not in case.name:
                    continue
                for t in tiers:
                    check = (gradcheck.elementwise_check if t == "elementwise"
                             else gradcheck.directional_check)
                    err = check(case, seed=seed)
                    ok = err < gradcheck.TOLERANCE
                    failed += not ok
                    print("%-28s %-6s %-12s %.2e  %s" % (case.name, path, t, err,
                                                         "OK" if ok else "FAIL"), flush=True)
    print("%d FAIL" % failed if failed else "all OK")
    return 1 if failed else 0


def main(argv=None):
    """Entry point of cupyden-gradcheck; returns the exit code."""
    return run(__doc__, argv, _body, "cupyden-gradcheck")
