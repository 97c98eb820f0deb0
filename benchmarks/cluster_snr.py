"""Clustering simulated GroEL particles seen at any in-plane angle, across SNRs.

Usage:
  cluster_snr.py [options]
  cluster_snr.py -h | --help

Options:
  --snrs LIST         Per-pixel SNRs (signal variance / noise variance)
                      [default: 0.2,0.1,0.05,0.02,0.01]
  --k K               Orientations (true classes) [default: 5]
  --per-class N       Images per orientation [default: 200]
  --rounds R          Siamese rounds after round 0 [default: 3]
  --steps N           Training steps per round [default: 300]
  --box PX            Side the network sees, px (images are 64 px) [default: 32]
  --pixel-size A      Pixel size of the 64-px images, Å/px [default: 4.0]
  --defocus A         Defocus of the micrograph, Å, underfocus positive [default: 15000]
  --max-shift PX      Particle shifts are uniform in a disc of this radius, px [default: 3]
  --seed N            Seed of the simulation and of the clustering [default: 0]
  --unrotated LIST    Also these SNRs of the old benchmark, after the others: views
                      without in-plane rotation, shift or CTF (particle_set), where
                      round 0 is already right and the rounds must not lose it.
  --quick             The small CPU case: --snrs 0.1 --per-class 60 --steps 150 (other
                      options as given).
  -d, --device N      GPU number or -1 for the CPU [default: 0]
  --pdb PATH          Atomic model [default: ../shared/data/models/eman2_1MNF_GroEL_14mer.pdb.gz]
  -h, --help          Show this help.

Particles: cupyden.simulate.particle_stack (each image at a uniformly random in-plane
angle and a shift in a disc of --max-shift px, through the CTF of one micrograph at the
given defocus, 300 kV, Cs 2.7 mm, amplitude contrast 0.07; white Gaussian noise at the SNR).
Round 0 is k-means on principal components; rounds 1.. train the Siamese embedding on
augmented views (cupyden.cluster), which returns the round with the highest unsupervised
score (silhouette after alignment; "chosen" column). Per SNR and round it prints purity
and NMI against the true orientations, the score, and the PSNR of the class averages
against the clean, aligned projection of each class's majority orientation, with the members averaged as they are
("unaligned") and after iterative rotational and translational alignment to the class
average ("aligned", cupyden.align.align_classes). Before scoring, each average is brought
onto its clean projection by one alignment (both kinds alike) and compared inside the disc
of diameter 64 px: PSNR = 20 log10(range(clean) / RMS(average - clean)), in dB; the mean
over classes is printed. A summary follows: per SNR, round 0 against the chosen round.
"""

import time

import numpy
from docopt import docopt

from cupyden import backend
from cupyden.align import align, align_classes, average_aligned, inverse, transform
from cupyden.cluster import class_averages, cluster
from cupyden.io.patches import fourier_resize
from cupyden.simulate import Optics, particle_set, particle_stack, read_atoms


def psnr_in_disc(averages, labels, truth, clean, xp):
    """Mean over non-empty classes of the PSNR (dB) of each average against the clean
    projection of its majority orientation, after aligning the average onto it."""
    H = clean.shape[-1]
    yy, xx = numpy.mgrid[:H, :H] - H // 2
    disc = yy ** 2 + xx ** 2 < (H // 2) ** 2
    out = []
    for c in range(len(averages)):
        if not (labels == c).any():
            continue
        ref = clean[numpy.bincount(truth[labels == c]).argmax()]
        a, t, _ = align(xp.asarray(averages[c][None]), xp.asarray(ref[None]))
        ia, it = inverse(a, t)
        back = backend.to_host(transform(xp.asarray(averages[c][None]), ia, it))[0]
        rms = numpy.sqrt(((back - ref)[disc] ** 2).mean())
        out.append(20 * numpy.log10((ref.max() - ref.min()) / rms))
    return float(numpy.mean(out))


def main():
    args = docopt(__doc__)
    if args["--quick"]:
        args.update({"--snrs": "0.1", "--per-class": "60", "--steps": "150"})
    dev = backend.select_device(args["--device"])
    xp = dev.xp
    xyz, z = read_atoms(args["--pdb"])
    k, per, box = int(args["--k"]), int(args["--per-class"]), int(args["--box"])
    rounds, steps, seed = int(args["--rounds"]), int(args["--steps"]), int(args["--seed"])
    pixel, shift = float(args["--pixel-size"]), float(args["--max-shift"])
    optics = Optics(defocus=float(args["--defocus"]))
    cases = [("rotated", float(v)) for v in args["--snrs"].split(",")]
    if args["--unrotated"]:
        cases += [("unrotated", float(v)) for v in args["--unrotated"].split(",")]
    print("device: %s; %d orientations x %d images, 64 px at %.1f A/px, defocus %.0f A, "
          "shifts <= %.1f px; network %d px, %d rounds x %d steps"
          % (dev.name, k, per, pixel, optics.defocus, shift, box, rounds, steps))
    print("| views | SNR | round | purity | NMI | score | chosen | PSNR unaligned (dB) "
          "| PSNR aligned (dB) | aligned - unaligned | clustering, all rounds | alignment |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary = []
    for views, snr in cases:
        rng = numpy.random.default_rng(seed)
        if views == "rotated":
            st = particle_stack(xyz, z, k, per, 64, pixel, snr, rng, optics, shift, xp=xp)
            images, truth, clean = st.images, st.labels, st.clean
        else:
            images, truth, clean = particle_set(xyz, z, k, per, 64, pixel, snr, rng)
        t0 = time.perf_counter()
        _, hist = cluster(fourier_resize(images, (box, box)), k, rounds, xp, steps, seed=seed,
                          truth=truth, log=lambda m: None, max_shift=(shift + 1) * box / 64)
        t_cluster = time.perf_counter() - t0
        on_device = xp.asarray(images)
        for h in hist:
            t1 = time.perf_counter()
            labels = h["labels"]
            plain = class_averages(images, labels, k)
            _, angles, shifts = align_classes(on_device, labels, k, max_shift=shift + 1, seed=seed)
            aligned = backend.to_host(average_aligned(on_device, labels, k, angles, shifts))
            h["psnr"] = (psnr_in_disc(plain, labels, truth, clean, xp),
                         psnr_in_disc(aligned, labels, truth, clean, xp))
            spent = "%.0f s" % t_cluster if h["round"] == 0 else ""
            print("| %s | %.3f | %d | %.3f | %.3f | %.3f | %s | %.1f | %.1f | %+.1f | %s | %.0f s |" % (
                views, snr, h["round"], h["purity"], h["nmi"], h["score"],
                "yes" if h["chosen"] else "", h["psnr"][0], h["psnr"][1],
                h["psnr"][1] - h["psnr"][0], spent, time.perf_counter() - t1), flush=True)
        best = next(h for h in hist if h["chosen"])
        summary.append((views, snr, hist[0]["purity"], best))
    print()
    print("| views | SNR | round 0 purity | chosen round | its purity | minus round 0 "
          "| its aligned - unaligned (dB) |")
    print("|---|---|---|---|---|---|---|")
    for views, snr, p0, best in summary:
        print("| %s | %.3f | %.3f | %d | %.3f | %+.3f | %+.1f |" % (
            views, snr, p0, best["round"], best["purity"], best["purity"] - p0,
            best["psnr"][1] - best["psnr"][0]))


if __name__ == "__main__":
    main()
