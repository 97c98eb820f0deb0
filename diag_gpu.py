"""Lead's one-off GPU diagnostics (not committed): start-up phases of a fresh process, and
the cuDNN plans Topaz's network gets in strict fp32."""
import sys
import time

T = [("start", time.perf_counter())]


def mark(name):
    T.append((name, time.perf_counter()))
    print("%-45s %7.3f s" % (name, T[-1][1] - T[-2][1]), flush=True)


what = sys.argv[1]
if what == "startup":
    import numpy
    mark("import numpy")
    import cupy  # noqa: F401
    mark("import cupy")
    import cupyden
    from cupyden import backend
    dev = backend.select_device("0")
    mark("select_device (CUDA context + test kernel)")
    from cupyden.kernels import cudnn_fe
    print(cudnn_fe.problem())
    mark("cuDNN load + probe")
    from cupyden.io.checkpoint import save_checkpoint
    from cupyden.models import DnCNN
    m = DnCNN(depth=12, width=32, seed=0)
    save_checkpoint("/tmp/m.h5", m.state(), {"model": m.config(), "bin": 1, "normalize": "robust"})
    mark("write a model file")
    model = cupyden.load_model("/tmp/m.h5", device=0)
    mark("load_model (precision auto)")
    img = numpy.random.default_rng(0).poisson(20, (4096, 4096)).astype(numpy.float32)
    mark("make a 4k image")
    out = cupyden.denoise(model, img)
    mark("first denoise 4k (plans built/tuned)")
    out = cupyden.denoise(model, img)
    mark("second denoise 4k")
    print("total %.3f s" % (T[-1][1] - T[0][1]))
else:
    import numpy
    from cupyden import backend
    from cupyden.functional.conv import set_precision
    from cupyden.functional import conv_cudnn
    from cupyden.kernels import cudnn_fe
    from cupyden.models import build_model
    xp = backend.select_device("0").xp
    for p in ("fp32", "tf32"):
        dt = set_precision(p, xp)
        m = build_model({"arch": "topaz-unet", "seed": 0}).to(xp, dt).eval()
        x = xp.asarray(numpy.random.default_rng(0).standard_normal((1, 1, 1024, 1024)), dt)
        m.forward(x)
        backend.synchronize(xp)
        t0 = time.perf_counter()
        m.forward(x)
        backend.synchronize(xp)
        print("%s topaz forward 1024^2: %.1f ms" % (p, 1e3 * (time.perf_counter() - t0)))
    for k, ms, idx, cand in sorted(cudnn_fe.tuned_plans(), key=lambda r: -r[1])[:12]:
        print("%8.2f ms plan %d of %d: %s" % (ms, idx, cand, str(k)[:230]))
    print("unsupported:", {str(k)[:120]: v[:200] for k, v in cudnn_fe.UNSUPPORTED.items()})
    print("im2col fallbacks:", conv_cudnn.IM2COL_FALLBACKS)
