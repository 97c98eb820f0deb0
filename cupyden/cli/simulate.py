"""cupyden-simulate: micrographs, movies and tilt series of an atomic model in ice, with
ground truth.

Copies of the model at random non-overlapping positions and uniformly random
orientations; Coulomb potential from Peng 1996 scattering factors, solvent subtracted;
projection approximation; CTF (defocus, astigmatism, Cs, voltage, amplitude contrast,
B-factor); zero-loss attenuation by the ice; Poisson counts per frame; optional drift.
A tilt series (tilt-series) tilts the copies in a slab about the y axis, damages them
with the dose received (Grant & Grigorieff 2015), splits each tilt's frames into even and
odd halves and reconstructs three tomograms by weighted back-projection (Radermacher
1988); the truth is the potential itself. The physics, with its sources, is in the
docstrings of cupyden/simulate.py.

Usage:
  cupyden-simulate tilt-series [options] OUTPUT
  cupyden-simulate [options] OUTPUT
  cupyden-simulate -h | --help

Arguments:
  OUTPUT                 Output folder (created).

Options:
  --model FILE           Atomic model, PDB or mmCIF (.gz allowed); the default is the
                         GroEL 14-mer (PDB 1MNF) shipped with cupyden [default: groel]
  -n, --micrographs N    Number of micrographs (tilt series with tilt-series) [default: 1]
  --name NAME            Basename; micrograph i is NAME_0000i [default: sim]
  --size PX              Image side, or ROWSxCOLUMNS [default: 4096]
  --pixel-size A         Pixel size, Å/px [default: 1.0]
  --particles N          Copies per micrograph, or auto (about a quarter of the area; a
                         tilt series: 15% of the slab's volume) [default: auto]
  --ice-thickness A      Ice slab thickness, Å; auto = 300 for micrographs, 60% of the
                         volume's depth for the slab of a tilt series' particle centres
                         [default: auto]
  --defocus A            Mean defocus in Å, positive = underfocus; LOW:HIGH draws it
                         uniformly per micrograph; auto = 15000, and 30000 for a tilt
                         series [default: auto]
  --astigmatism A        Defocus difference between the principal axes, Å [default: 0]
  --astigmatism-angle D  Axis of largest defocus from x, degrees [default: 0]
  --cs MM                Spherical aberration, mm [default: 2.7]
  --voltage KV           Acceleration voltage, kV [default: 300]
  --amplitude-contrast A
                         Amplitude contrast fraction [default: 0.07]
  --bfactor B            B-factor of the potential, Å^2 [default: 50]
  --dose E               Total dose, e-/Å^2; auto = 40 for a micrograph, 120 for a tilt
                         series (spread evenly over the tilts) [default: auto]
  --frames F             Movie frames (per tilt for a tilt series); auto = 40, and 8
                         per tilt [default: auto]
  --drift A              Drift, Å RMS per frame and axis (0 = none) [default: 0]
  --seed S               Seed; micrograph i uses S + i [default: 0]
  --even-odd             Also write the sums of the even and of the odd frames
                         (NAME_even.mrc, NAME_odd.mrc): two halves with independent
                         noise, e.g. for cupyden-evaluate of a movie held out of training.
  --volume DxHxW         tilt-series: tomogram size in voxels, depth (along the beam)
                         x rows x columns [default: 96x256x256]
  --voxel-size A         tilt-series: Å/voxel of the tomograms, Å/px of the tilt images
                         [default: 8]
  --tilts LIST           tilt-series: angles in degrees, MIN:MAX:STEP or a comma-separated
                         list [default: -60:60:3]
  --order ORDER          tilt-series: acquisition order, dose-symmetric (Hagen et al.
                         2017) or sequential; it sets the dose each tilt has received
                         [default: dose-symmetric]
  --defocus-gradient     tilt-series: vary the defocus across each tilted image.
  --no-damage            tilt-series: no radiation damage.
  --star                 tilt-series: also write OUTPUT/tomograms.star (RELION 5:
                         rlnTomoName, rlnTomoTiltSeriesPixelSize,
                         rlnTomoReconstructedTomogramHalf1, ...Half2, ...).
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

Outputs per tilt series: NAME_half1.mrc and NAME_half2.mrc (tomograms of the even and of
the odd frames), NAME_full.mrc (all frames: the mean of the halves), NAME_clean.mrc (the
truth: Coulomb potential in V), all float32 in image contrast with the voxel size in the
header (protein dark); NAME_even.mrcs and NAME_odd.mrcs (float32 counts of each tilt's
half, angles ascending); NAME.tlt (the angles, one per line, as IMOD reads them);
NAME_particles.csv (z, row, column in voxels, quaternion); NAME.json.
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
from ..io.star import write_tomograms_star
from ..simulate import (DEFAULT_MODEL, ORDERS, Optics, read_atoms, simulate_micrograph,
                        simulate_tilt_series, tilt_angles)
from .common import as_choice, as_float, as_int, output_folder, run


def _size(text, option="--size", sides=2, minimum=16):
    """'4096' or '3838x3710' -> (rows, columns); with sides=3 'DxHxW' -> (D, H, W)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * sides
    if len(parts) != sides or min(parts) < minimum:
        raise InputError("%s must be %s of at least %d px, got %r" % (
            option, "PX or ROWSxCOLUMNS" if sides == 2 else "DEPTHxROWSxCOLUMNS", minimum,
            text))
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


def _tilts(text):
    """'-60:60:3' or '-30,0,30' -> float array of degrees."""
    try:
        if ":" in text:
            low, high, step = (float(v) for v in text.split(":"))
            angles = tilt_angles(low, high, step) if step > 0 and high >= low else []
        else:
            angles = [float(v) for v in text.split(",")]
    except ValueError:
        angles = []
    if not len(angles) or max(abs(a) for a in angles) >= 90:
        raise InputError("--tilts must be MIN:MAX:STEP (STEP > 0) or a comma-separated list "
                         "of degrees within (-90, 90), got %r" % text)
    return list(angles)


def _auto(args, key, micrograph, tilt_series):
    """An option's text, its 'auto' replaced by the default of the mode."""
    if args[key] != "auto":
        return args[key]
    return str(tilt_series if args["tilt-series"] else micrograph)


def _parse(args):
    """Options -> settings (InputError on bad values)."""
    o = {"tilt_series": bool(args["tilt-series"]), "output": args["OUTPUT"],
         "name": args["--name"], "progress": not args["--no-progress"],
         "model": DEFAULT_MODEL if args["--model"] == "groel" else args["--model"],
         "n": as_int(args, "--micrographs", 1), "seed": as_int(args, "--seed", 0),
         "particles": None if args["--particles"] == "auto" else as_int(args, "--particles", 0),
         "defocus": _defocus_range(_auto(args, "--defocus", 15000, 30000)),
         "optics": dict(voltage=as_float(args, "--voltage", 1), cs=as_float(args, "--cs", 0),
                        amplitude_contrast=as_float(args, "--amplitude-contrast", 0, 0.99),
                        astigmatism=as_float(args, "--astigmatism"),
                        astigmatism_angle=as_float(args, "--astigmatism-angle"),
                        bfactor=as_float(args, "--bfactor", 0))}
    for key, micrograph, tilt_series in (("--dose", 40, 120), ("--frames", 40, 8)):
        args[key] = _auto(args, key, micrograph, tilt_series)
    dose = as_float(args, "--dose", 1e-6)
    if o["tilt_series"]:
        slab = (None if args["--ice-thickness"] == "auto"
                else as_float(args, "--ice-thickness", 0))
        o["kw"] = dict(shape=_size(args["--volume"], "--volume", 3, 8),
                       voxel_size=as_float(args, "--voxel-size", 1e-3),
                       angles=_tilts(args["--tilts"]), order=as_choice(args, "--order", ORDERS),
                       particles=o["particles"], dose=dose, frames=as_int(args, "--frames", 2),
                       slab_thickness=slab,
                       defocus_gradient=args["--defocus-gradient"],
                       damage=not args["--no-damage"])
        o["star"] = args["--star"]
    else:
        args["--ice-thickness"] = _auto(args, "--ice-thickness", 300, None)
        o["shape"] = _size(args["--size"])
        o["even_odd"] = args["--even-odd"]
        o["kw"] = dict(pixel_size=as_float(args, "--pixel-size", 1e-3),
                       ice_thickness=as_float(args, "--ice-thickness", 0), dose=dose,
                       frames=as_int(args, "--frames", 1), drift=as_float(args, "--drift", 0),
                       particles=o["particles"])
    return o


def write_particles(path, particles, fields=("row", "column", "height_A", "qw", "qx", "qy",
                                             "qz")):
    """The particle table as CSV (atomic)."""
    with atomic_output(path, ".csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fields)
            w.writeheader()
            for row in particles:
                w.writerow({k: "%.6g" % row[k] for k in fields})


def _write_json(path, meta):
    with atomic_output(path, ".json") as tmp:
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)


def _write_text(path, lines):
    with atomic_output(path, os.path.splitext(path)[1]) as tmp:
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in lines))


def _body(args):
    import numpy
    from tqdm import tqdm

    o = _parse(args)
    device = backend.select_device(args["--device"])
    xyz, z = read_atoms(o["model"])
    output_folder(o["output"])
    rng = numpy.random.default_rng(o["seed"])
    low, high = o["defocus"]
    defoci = rng.uniform(low, high, o["n"]) if high > low else [low] * o["n"]
    kind = "tilt series" if o["tilt_series"] else "micrograph(s)"
    size = o["kw"]["shape"][::-1] if o["tilt_series"] else o["shape"][::-1]
    print("device: %s; model %s (%d atoms); %d %s of %s %s" % (
        device.name, o["model"], len(z), o["n"], kind, "x".join(map(str, size)),
        "voxels" if o["tilt_series"] else "px"))
    t0 = time.perf_counter()
    stars = []
    for i in tqdm(range(o["n"]), unit="tilt series" if o["tilt_series"] else "micrograph",
                  disable=not o["progress"]):
        name = os.path.join(o["output"], "%s_%05d" % (o["name"], i))
        optics = Optics(defocus=float(defoci[i]), **o["optics"])
        labels = ["cupyden-simulate %s, seed %d" % (os.path.basename(o["model"]), o["seed"] + i),
                  "defocus %.0f A, Cs %g mm, %g kV, A %.3g, B %g A^2"
                  % (optics.defocus, optics.cs, optics.voltage, optics.amplitude_contrast,
                     optics.bfactor)]
        t = time.perf_counter()
        if o["tilt_series"]:
            sim = simulate_tilt_series(xyz, z, optics=optics, seed=o["seed"] + i,
                                       xp=device.xp, **o["kw"])
            seconds = time.perf_counter() - t
            stars.append(_write_tilt_series(name, sim, labels, optics))
            extra = {}
        else:
            sim = simulate_micrograph(xyz, z, o["shape"], optics=optics, seed=o["seed"] + i,
                                      xp=device.xp, **o["kw"])
            seconds = time.perf_counter() - t
            _write_micrograph(name, sim, labels, o)
            extra = {"drift_A": sim.shifts.tolist()}
        _write_json(name + ".json", dict(sim.params, model=os.path.abspath(o["model"]),
                                         seconds=seconds, device=device.name, **extra))
        tqdm.write("%s: %d particles, defocus %.0f Å, %.1f s" % (
            name, sim.params["particles"], optics.defocus, seconds))
    if stars and o["star"]:
        write_tomograms_star(os.path.join(o["output"], "tomograms.star"), stars)
        print("RELION 5 tomograms: %s" % os.path.join(o["output"], "tomograms.star"))
    print("%d %s in %.1f s" % (o["n"], kind, time.perf_counter() - t0))


def _write_micrograph(name, sim, labels, o):
    p = sim.params
    pixel_size = o["kw"]["pixel_size"]
    labels = labels + ["%d copies, %.4g e/A^2 in %d frames" % (
        p["particles"], p["dose_e_per_A2"], p["frames"])]
    write_mrc(name + "_movie.mrcs", sim.movie, pixel_size, labels=labels)
    write_mrc(name + "_clean.mrc", sim.clean, pixel_size,
              labels=labels + ["clean: expected counts of the whole dose, no drift"])
    if o["even_odd"]:
        even, odd, _ = even_odd_sums(sim.movie)
        write_mrc(name + "_even.mrc", even, pixel_size,
                  labels=labels + ["even half: sum of frames 0, 2, 4, ..."])
        write_mrc(name + "_odd.mrc", odd, pixel_size,
                  labels=labels + ["odd half: sum of frames 1, 3, 5, ..."])
    write_particles(name + "_particles.csv", sim.particles)


def _write_tilt_series(name, sim, labels, optics):
    """The tilt series' files; returns its row of the RELION 5 tomograms STAR file."""
    p, a = sim.params, sim.pixel_size
    labels = labels + ["%d copies, %d tilts %g..%g deg, %.4g e/A^2, %d frames per tilt" % (
        p["particles"], len(sim.angles), sim.angles[0], sim.angles[-1], p["dose_e_per_A2"],
        p["frames_per_tilt"])]
    files = {}
    for suffix, volume, what in (
            ("half1", sim.even, "tomogram of the even frames (WBP, contrast)"),
            ("half2", sim.odd, "tomogram of the odd frames (WBP, contrast)"),
            ("full", sim.full, "tomogram of all frames (WBP, contrast)"),
            ("clean", sim.clean, "truth: Coulomb potential, V")):
        files[suffix] = "%s_%s.mrc" % (name, suffix)
        write_mrc(files[suffix], volume, a, labels=labels + [what])
    write_mrc(name + "_even.mrcs", sim.tilts_even, a,
              labels=labels + ["counts of the even frames of each tilt, angles ascending"])
    write_mrc(name + "_odd.mrcs", sim.tilts_odd, a,
              labels=labels + ["counts of the odd frames of each tilt, angles ascending"])
    _write_text(name + ".tlt", ["%.2f" % angle for angle in sim.angles])
    write_particles(name + "_particles.csv", sim.particles,
                    ("z", "row", "column", "qw", "qx", "qy", "qz"))
    D, H, W = sim.full.shape
    return {"rlnTomoName": os.path.basename(name), "rlnVoltage": optics.voltage,
            "rlnSphericalAberration": optics.cs,
            "rlnAmplitudeContrast": optics.amplitude_contrast,
            "rlnTomoTiltSeriesPixelSize": a, "rlnTomoSizeX": W, "rlnTomoSizeY": H,
            "rlnTomoSizeZ": D, "rlnTomoReconstructedTomogram": files["full"],
            "rlnTomoReconstructedTomogramHalf1": files["half1"],
            "rlnTomoReconstructedTomogramHalf2": files["half2"]}


def main(argv=None):
    """Entry point of cupyden-simulate; returns the exit code."""
    return run(__doc__, argv, _body, "cupyden-simulate")
