"""cupyden-simulate: micrographs and movies of an atomic model in ice, with ground truth.

Copies of the model at random non-overlapping positions and uniformly random
orientations; Coulomb potential from Peng 1996 scattering factors, solvent subtracted;
projection approximation; CTF (defocus, astigmatism, Cs, voltage, amplitude contrast,
B-factor); zero-loss attenuation by the ice; Poisson counts per frame; optional drift.
The physics, with its sources, is in the docstring of cupyden/simulate.py.

Usage:
  cupyden-simulate [options] OUTPUT
  cupyden-simulate -h | --help

Arguments:
  OUTPUT                 Output folder (created).

Options:
  --model FILE           Atomic model, PDB or mmCIF (.gz allowed); the default is the
                         GroEL 14-mer (PDB 1MNF) shipped with cupyden [default: groel]
  -n, --micrographs N    Number of micrographs [default: 1]
  --name NAME            Basename; micrograph i is NAME_0000i [default: sim]
  --size PX              Image side, or ROWSxCOLUMNS [default: 4096]
  --pixel-size A         Pixel size, Å/px [default: 1.0]
  --particles N          Copies per micrograph, or auto (about a quarter of the area)
                         [default: auto]
  --ice-thickness A      Ice slab thickness, Å [default: 300]
  --defocus A            Mean defocus in Å, positive = underfocus; LOW:HIGH draws it
                         uniformly per micrograph [default: 15000]
  --astigmatism A        Defocus difference between the principal axes, Å [default: 0]
  --astigmatism-angle D  Axis of largest defocus from x, degrees [default: 0]
  --cs MM                Spherical aberration, mm [default: 2.7]
  --voltage KV           Acceleration voltage, kV [default: 300]
  --amplitude-contrast A
                         Amplitude contrast fraction [default: 0.07]
  --bfactor B            B-factor of the potential, Å^2 [default: 50]
  --dose E               Total dose, e-/Å^2 [default: 40]
  --frames F             Movie frames [default: 40]
  --drift A              Drift, Å RMS per frame and axis (0 = none) [default: 0]
  --seed S               Seed; micrograph i uses S + i [default: 0]
  --even-odd             Also write the sums of the even and of the odd frames
                         (NAME_even.mrc, NAME_odd.mrc): two halves with independent
                         noise, e.g. for cupyden-evaluate of a movie held out of training.
  -d, --device N         GPU number, -1 for the CPU, or auto; when not given,
                         CUPYDEN_DEVICE, else auto (the first GPU if any).
  --threads N            CPU threads for cupyden's kernels and BLAS; auto = the CPUs this
                         process may use (affinity, cgroup quota), or OMP_NUM_THREADS or
                         OPENBLAS_NUM_THREADS when set [default: auto]
  --no-progress          No progress bar.
  -h, --help             Show this help.

Outputs per micrograph in OUTPUT: NAME_movie.mrcs (int16 electron counts, F frames),
NAME_clean.mrc (float32 expected counts of the whole dose without drift: the ground truth
of the frame sum; the expectation of an even or odd half-sum is half of it),
NAME_particles.csv (row and column in pixels, height in the ice in Å, orientation as a
unit quaternion w x y z), NAME.json (every parameter, the drift per frame, the seed);
with --even-odd NAME_even.mrc and NAME_odd.mrc (float32 counts; frames 0, 2, 4, ... and
1, 3, 5, ...; each expects about half of NAME_clean.mrc).
"""

import csv
import json
import os
import time

from .. import backend
from ..errors import InputError
from ..io.atomic import atomic_output
from ..io.movies import even_odd_sums
from ..io.mrc import write_mrc
from ..simulate import DEFAULT_MODEL, Optics, read_atoms, simulate_micrograph
from .common import as_float, as_int, output_folder, run


def _size(text):
    """'4096' or '3838x3710' -> (rows, columns)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 16:
        raise InputError("--size must be PX or ROWSxCOLUMNS of at least 16 px, got %r" % text)
    return tuple(parts)


def _defocus_range(text):
    """'15000' or '15000:25000' -> (low, high) in Å."""
    try:
        parts = [float(v) for v in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or parts[0] > parts[1]:
        raise InputError("--defocus must be A or LOW:HIGH in Å, got %r" % text)
    return parts


def write_particles(path, particles):
    """The particle table as CSV (atomic)."""
    fields = ["row", "column", "height_A", "qw", "qx", "qy", "qz"]
    with atomic_output(path, ".csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fields)
            w.writeheader()
            for row in particles:
                w.writerow({k: "%.6g" % row[k] for k in fields})


def _body(args):
    import numpy
    from tqdm import tqdm

    device = backend.select_device(args["--device"])
    model = DEFAULT_MODEL if args["--model"] == "groel" else args["--model"]
    xyz, z = read_atoms(model)
    shape = _size(args["--size"])
    n = as_int(args, "--micrographs", 1)
    seed = as_int(args, "--seed", 0)
    particles = None if args["--particles"] == "auto" else as_int(args, "--particles", 0)
    low, high = _defocus_range(args["--defocus"])
    common = dict(
        voltage=as_float(args, "--voltage", 1), cs=as_float(args, "--cs", 0),
        amplitude_contrast=as_float(args, "--amplitude-contrast", 0, 0.99),
        astigmatism=as_float(args, "--astigmatism"),
        astigmatism_angle=as_float(args, "--astigmatism-angle"),
        bfactor=as_float(args, "--bfactor", 0))
    kw = dict(pixel_size=as_float(args, "--pixel-size", 1e-3),
              ice_thickness=as_float(args, "--ice-thickness", 0),
              dose=as_float(args, "--dose", 1e-6), frames=as_int(args, "--frames", 1),
              drift=as_float(args, "--drift", 0), particles=particles)
    out = args["OUTPUT"]
    output_folder(out)
    print("device: %s; model %s (%d atoms); %d micrograph(s) of %dx%d px"
          % (device.name, model, len(z), n, shape[1], shape[0]))
    rng = numpy.random.default_rng(seed)
    defoci = rng.uniform(low, high, n) if high > low else [low] * n
    t0 = time.perf_counter()
    for i in tqdm(range(n), unit="micrograph", disable=args["--no-progress"]):
        name = os.path.join(out, "%s_%05d" % (args["--name"], i))
        optics = Optics(defocus=float(defoci[i]), **common)
        t = time.perf_counter()
        sim = simulate_micrograph(xyz, z, shape, optics=optics, seed=seed + i, xp=device.xp, **kw)
        seconds = time.perf_counter() - t
        p = sim.params
        labels = ["cupyden-simulate %s: %d copies, %.4g e/A^2 in %d frames"
                  % (os.path.basename(model), p["particles"], p["dose_e_per_A2"], p["frames"]),
                  "defocus %.0f A, Cs %g mm, %g kV, A %.3g, B %g A^2, seed %d"
                  % (optics.defocus, optics.cs, optics.voltage, optics.amplitude_contrast,
                     optics.bfactor, seed + i)]
        write_mrc(name + "_movie.mrcs", sim.movie, kw["pixel_size"], labels=labels)
        write_mrc(name + "_clean.mrc", sim.clean, kw["pixel_size"],
                  labels=labels + ["clean: expected counts of the whole dose, no drift"])
        if args["--even-odd"]:
            even, odd, _ = even_odd_sums(sim.movie)
            write_mrc(name + "_even.mrc", even, kw["pixel_size"],
                      labels=labels + ["even half: sum of frames 0, 2, 4, ..."])
            write_mrc(name + "_odd.mrc", odd, kw["pixel_size"],
                      labels=labels + ["odd half: sum of frames 1, 3, 5, ..."])
        write_particles(name + "_particles.csv", sim.particles)
        meta = dict(p, model=os.path.abspath(model), drift_A=sim.shifts.tolist(),
                    seconds=seconds, device=device.name)
        with atomic_output(name + ".json", ".json") as tmp:
            with open(tmp, "w") as f:
                json.dump(meta, f, indent=1)
        tqdm.write("%s: %d particles, defocus %.0f Å, %.1f s" % (
            name, p["particles"], optics.defocus, seconds))
    print("%d micrograph(s) in %.1f s" % (n, time.perf_counter() - t0))


def main(argv=None):
    """Entry point of cupyden-simulate; returns the exit code."""
    return run(__doc__, argv, _body, "cupyden-simulate")
