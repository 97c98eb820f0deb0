"""cupyden-cluster: group particle images seen at any in-plane angle with a Siamese network
and k-means; aligned class averages.

Round 0 clusters the normalised images by k-means on their principal components; each of
the --rounds rounds trains the Siamese embedding with the contrastive loss on augmented
views (random in-plane rotation, shift and added noise: two views of one image are a
positive pair; from round 2 on also two images of one cluster, and images of different
clusters are negatives), embeds every image averaged over in-plane rotations and
reclusters. The images are resampled to --box pixels for the network (Fourier cropping: a
low-pass that helps at low SNR). The classes kept are those of the round with the highest
silhouette of the images in their classes (one minus the correlation with the class
averages after alignment by shift, or by in-plane angle and shift, whichever scores higher;
no labels needed), so round 0 stays when no Siamese round beats it; one line says which
round and why. Each class's members are then aligned (in-plane angle and shift) to the
class average at the images' own size, iteratively, and averaged.

Usage:
  cupyden-cluster [options] STACK -k K
  cupyden-cluster -h | --help

Arguments:
  STACK               A particle stack (.mrcs or .mrc, images along Z).

Options:
  -k K                Number of classes.
  --rounds R          Siamese rounds after round 0 [default: 3]
  --box PX            Image side the network sees, in pixels [default: 64]
  --steps N           Training steps per round [default: 150]
  --batch-size N      Pairs per step [default: 32]
  --lr LR             Adam learning rate [default: 0.001]
  --max-shift PX      Largest shift searched when aligning (and when scoring the
                      rounds), in pixels of the stack [default: 4]
  --align-iterations N  Rounds of aligning the members to their class average and
                      averaging again; 0 = plain averages [default: 3]
  --seed N            Seed of pairs, weights and k-means [default: 0]
  -d, --device N      GPU number, -1 for the CPU, or auto; when not given,
                      CUPYDEN_DEVICE, else auto (the first GPU if any).
  --threads N         CPU threads for cupyden's kernels and BLAS; auto = the CPUs this
                      process may use (affinity, cgroup quota), or OMP_NUM_THREADS or
                      OPENBLAS_NUM_THREADS when set [default: auto]
  -o, --output DIR    Output folder (created) [default: clusters]
  --no-progress       No progress bar.
  -h, --help          Show this help.

Outputs in DIR, all of the chosen round: class_averages.mrcs (K aligned averages, the
stack's pixel size),
labels.csv (image index, class, in-plane angle in degrees, shift x and y in pixels),
particles.star (RELION 3.1: rlnImageName n@STACK, rlnClassNumber from 1, rlnAnglePsi,
rlnOriginXAngst/rlnOriginYAngst, or rlnOriginX/rlnOriginY in pixels when the stack has no
pixel size; needs the star extra, pip install 'cupyden[star]', and is skipped with a note
without it), montage.png (the class averages with their sizes), losses.png (the
contrastive loss of each round).
"""

import csv
import os

import numpy

from .. import backend, report
from ..align import align_classes
from ..cluster import class_averages, cluster
from ..errors import InputError
from ..io.atomic import atomic_output
from ..io.mrc import read_mrc, write_mrc
from ..io.patches import fourier_resize
from ..io.star import star_available, write_particles_star
from .common import as_float, as_int, output_folder, run


def montage(averages, counts, path, pixel_size):
    """The class averages in a grid, each titled with its class and size (``pixel_size``
    in Å/px, 0 when unknown)."""
    k = len(averages)
    cols = min(k, 6)
    rows = (k + cols - 1) // cols
    fig, axes = report._figure(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for c, (img, n) in enumerate(zip(averages, counts)):
        lo, hi = report.contrast_limits(img, 1, 99)
        axes.ravel()[c].imshow(img, cmap="gray", vmin=lo, vmax=hi)
        axes.ravel()[c].set_title("class %d: %d" % (c, n), fontsize=9)
    size = "%.2f Å/px" % pixel_size if pixel_size else "pixel size unknown"
    fig.suptitle("class averages (%s, %d px)" % (size, averages.shape[-1]))
    report.save_png(fig, path)


def _body(args):
    device = backend.select_device(args["--device"])
    k = as_int(args, "-k", 1)
    rounds, box = as_int(args, "--rounds", 0), as_int(args, "--box", 8)
    steps, batch = as_int(args, "--steps", 1), as_int(args, "--batch-size", 2)
    lr, seed = as_float(args, "--lr", 0), as_int(args, "--seed", 0)
    max_shift = as_float(args, "--max-shift", 0)
    iterations = as_int(args, "--align-iterations", 0)
    stack = read_mrc(args["STACK"], ndim=3)
    images = numpy.asarray(stack.data, numpy.float32)
    if len(images) < 2 * k:
        raise InputError("%s: %d images is too few for %d classes (need at least 2 per class)"
                         % (args["STACK"], len(images), k))
    out = args["--output"]
    output_folder(out)
    print("device: %s; %d images of %d px -> %d px, %d classes, %d rounds"
          % (device.name, len(images), images.shape[-1], box, k, rounds))
    small = fourier_resize(images, (box, box))
    labels, history = cluster(small, k, rounds, device.xp, steps, batch, lr, seed,
                              progress=not args["--no-progress"],
                              max_shift=max_shift * box / images.shape[-1])
    angles, shifts = numpy.zeros(len(images)), numpy.zeros((len(images), 2))
    averages = class_averages(images, labels, k)
    if iterations:
        averages, angles, shifts = align_classes(backend.to_device(images, device.xp), labels,
                                                 k, iterations, max_shift, seed)
    counts = numpy.bincount(labels, minlength=k)
    write_mrc(os.path.join(out, "class_averages.mrcs"), averages, stack.pixel_size)
    with atomic_output(os.path.join(out, "labels.csv"), ".csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "class", "angle_deg", "shift_x_px", "shift_y_px"])
        w.writerows([n, int(c), "%.2f" % a, "%.2f" % t[0], "%.2f" % t[1]]
                    for n, (c, a, t) in enumerate(zip(labels, angles, shifts)))
    if star_available():
        write_particles_star(os.path.join(out, "particles.star"), args["STACK"], labels, angles,
                             shifts, stack.pixel_size, images.shape[-1])
    else:
        print("particles.star not written: it needs the starfile package "
              "(pip install 'cupyden[star]')")
    montage(averages, counts, os.path.join(out, "montage.png"), stack.pixel_size)
    fig, ax = report._figure(figsize=(6, 4))
    for h in history[1:]:
        ax.plot(h["losses"], label="round %d" % h["round"])
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    if rounds:
        ax.legend()
    report.save_png(fig, os.path.join(out, "losses.png"))
    print("class sizes: %s; outputs in %s" % (" ".join(str(c) for c in counts), out))


def main(argv=None):
    """Entry point of cupyden-cluster; returns the exit code."""
    return run(__doc__, argv, _body, "cupyden-cluster")
