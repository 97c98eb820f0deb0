"""Host memory while building a patch store from many 4k micrographs (issue 17).

Writes N synthetic counting-mode micrographs (uint16 Poisson counts, MRC) once, then builds
the patch store of ``cupyden-train --pairs count-split`` from them through
``cupyden.pipeline.train.build_store`` (one micrograph at a time) while a thread samples
the process's resident memory (VmRSS in /proc/self/status) every --every seconds. Prints
the curve (the largest sample between consecutive micrographs), the largest sample and the
kernel's high-water mark (VmHWM: the peak, even between samples).

The old path (before the streaming build) held every view of every micrograph in memory:
three float32 images per micrograph (a, b and their sum), 3 x 64 MiB for a 4096^2
micrograph at --bin 1, 3 x 16 MiB at --bin 2, before the first patch was written.

Usage:
  store_rss.py [options]

Options:
  --n N              Micrographs [default: 50]
  --size PX          Side of each micrograph, pixels [default: 4096]
  --counts C         Mean electron counts per pixel [default: 30]
  --bin B            Binning after the split (cupyden-train --bin) [default: 2]
  --patch-size PX    [default: 64]
  --stride PX        [default: 32]
  --every S          Sampling period, seconds [default: 0.2]
  -d N               Device (-1 = CPU) [default: -1]
  --work DIR         Folder for the micrographs (kept for later runs) and the store
                     [default: store-rss-work]
"""

import os
import threading
import time

import numpy
from docopt import docopt

from cupyden import backend
from cupyden.io.mrc import write_mrc
from cupyden.pipeline.train import build_store, resolve_options


def vm(key):
    """A VmXXX line of /proc/self/status, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    args = docopt(__doc__)
    n, size, work = int(args["--n"]), int(args["--size"]), args["--work"]
    mics = os.path.join(work, "mics")
    os.makedirs(mics, exist_ok=True)
    rng = numpy.random.default_rng(0)
    for i in range(n):
        path = os.path.join(mics, "mic%03d.mrc" % i)
        if not os.path.exists(path):
            counts = rng.poisson(float(args["--counts"]), (size, size)).astype(numpy.uint16)
            write_mrc(path, counts, 1.0)
            del counts
    dev = backend.select_device(args["-d"])
    o = resolve_options(os.path.join(mics, "*.mrc"), pairs="count-split",
                        binning=int(args["--bin"]), patch_size=int(args["--patch-size"]),
                        stride=int(args["--stride"]))
    store = os.path.join(work, "patches.h5")
    if os.path.exists(store):
        os.remove(store)
    with open("/proc/self/clear_refs", "w") as f:     # VmHWM from here on (Linux >= 4.0)
        f.write("5")
    samples, marks, stop = [], [], threading.Event()
    t0 = time.perf_counter()

    def sample():
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, vm("VmRSS")))
            stop.wait(float(args["--every"]))

    thread = threading.Thread(target=sample, daemon=True)
    start_rss = vm("VmRSS")
    thread.start()
    build_store(store, o, dev.xp, log=lambda line: marks.append((time.perf_counter() - t0, line)))
    stop.set()
    thread.join()
    seconds = time.perf_counter() - t0
    done = [t for t, line in marks if "count split" in line]
    print("device %s; %d micrographs of %d^2 uint16, --bin %s, patch %s, stride %s: store "
          "%.2f GiB built in %.0f s" % (dev.name, n, size, args["--bin"], args["--patch-size"],
                                         args["--stride"], os.path.getsize(store) / 2 ** 30,
                                         seconds))
    print("RSS before the build %.0f MiB; %d samples every %s s\n" % (start_rss, len(samples),
                                                                      args["--every"]))
    print("| micrograph | split done at (s) | max RSS since the previous one (MiB) |")
    print("|---|---|---|")
    prev = 0.0
    for i, t in enumerate(done + [seconds]):
        window = [r for s, r in samples if prev <= s <= t]
        label = "%d" % (i + 1) if i < len(done) else "store closed"
        print("| %s | %.1f | %.0f |" % (label, t, max(window) if window else float("nan")))
        prev = t
    rss = [r for _, r in samples]
    print("\nRSS sampled: min %.0f, max %.0f MiB; first 5 micrographs max %.0f, last 5 max %.0f; "
          "VmHWM (peak) %.0f MiB" % (min(rss), max(rss),
                                     max(r for s, r in samples if s <= (done[4] if len(done) > 4 else seconds)),
                                     max(r for s, r in samples if s >= (done[-6] if len(done) > 5 else 0)),
                                     vm("VmHWM")))


if __name__ == "__main__":
    main()
