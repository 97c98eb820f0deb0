"""Where a fresh process's time goes before and while it denoises one 4096^2 micrograph.

Usage:
  startup_profile.py [-d N]

Options:
  -d N    GPU number, or -1 for the CPU [default: 0]

Prints the seconds of each phase, in order: imports, device (CUDA context and a test
kernel), cuDNN (library load and the probe convolution), the model (DnCNN-12/32 with seeded
weights, --precision auto), the first denoising of a 4096^2 Poisson image (CuPy kernels
compiled and cuDNN plans tuned unless their caches hold them) and a second one. Issue 16's
target for the whole (in a fresh process, with the caches filled): 3 s. Run it twice: the
first run on a new machine fills CuPy's kernel cache and cupyden's plan cache.
"""

import time

T = [time.perf_counter()]


def mark(name):
    T.append(time.perf_counter())
    print("%-48s %7.3f s" % (name, T[-1] - T[-2]), flush=True)


def main():
    from docopt import docopt
    args = docopt(__doc__)
    import os
    import tempfile

    import numpy
    mark("import numpy, docopt")
    import cupyden
    from cupyden import backend
    from cupyden.io.checkpoint import save_checkpoint
    from cupyden.models import DnCNN
    mark("import cupyden (and h5py)")
    dev = backend.select_device(args["-d"])
    mark("device: %s" % dev.name)
    if dev.is_gpu:
        from cupyden.kernels import cudnn_fe
        why = cudnn_fe.problem()
        mark("cuDNN load and probe (%s)" % ("usable" if why is None else why))
    path = os.path.join(tempfile.mkdtemp(), "model.h5")
    net = DnCNN(depth=12, width=32, seed=0)
    save_checkpoint(path, net.state(), {"model": net.config(), "bin": 1, "normalize": "robust"})
    model = cupyden.load_model(path, device=dev)
    mark("model file written and loaded (precision %s)" % model.precision)
    image = numpy.random.default_rng(0).poisson(20, (4096, 4096)).astype(numpy.float32)
    mark("a 4096^2 Poisson image")
    cupyden.denoise(model, image)
    mark("first denoising (kernels, plans)")
    cupyden.denoise(model, image)
    mark("second denoising")
    print("%-48s %7.3f s" % ("total", T[-1] - T[0]))


if __name__ == "__main__":
    main()
