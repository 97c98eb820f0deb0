"""Clustering simulated GroEL particles from known orientations across SNRs.

Usage:
  cluster_snr.py [--snrs LIST] [--k K] [--per-class N] [--rounds R] [--steps N] [--box PX]
                 [--device N] [--pdb PATH]

Options:
  --snrs LIST       Per-pixel SNRs (signal variance / noise variance) [default: 0.2,0.1,0.05,0.03,0.02]
  --k K             Orientations (true classes) [default: 5]
  --per-class N     Images per orientation [default: 100]
  --rounds R        Siamese rounds after round 0 [default: 3]
  --steps N         Training steps per round [default: 300]
  --box PX          Side the network sees (images are 64 px, 3 A/px) [default: 32]
  --device N        GPU number or -1 [default: 0]
  --pdb PATH        Atomic model [default: ../shared/data/models/eman2_1MNF_GroEL_14mer.pdb.gz]

Prints, per SNR and round, purity and NMI against the true orientations, and the PSNR of
each final class average against the clean projection of its majority orientation
(PSNR = 20 log10(range(clean) / RMS(average - clean)), in dB).
"""

import time

import numpy
from docopt import docopt

from cupyden import backend
from cupyden.cluster import class_averages, cluster
from cupyden.io.patches import fourier_resize
from cupyden.simulate import particle_set, read_atoms


def main():
    args = docopt(__doc__)
    dev = backend.select_device(args["--device"])
    xyz, z = read_atoms(args["--pdb"])
    k, per, box = int(args["--k"]), int(args["--per-class"]), int(args["--box"])
    print("device: %s; %d orientations x %d images, 64 px at 3 A/px -> %d px" % (dev.name, k, per, box))
    for snr in (float(s) for s in args["--snrs"].split(",")):
        images, truth, clean = particle_set(xyz, z, k, per, 64, 3.0, snr, numpy.random.default_rng(0))
        t0 = time.perf_counter()
        labels, hist = cluster(fourier_resize(images, (box, box)), k, int(args["--rounds"]), dev.xp,
                               int(args["--steps"]), truth=truth, log=lambda m: None)
        avgs = class_averages(images, labels, k)
        psnr = []
        for c in range(k):
            if (labels == c).any():
                ref = clean[numpy.bincount(truth[labels == c]).argmax()]
                rms = numpy.sqrt(((avgs[c] - ref) ** 2).mean())
                psnr.append(20 * numpy.log10((ref.max() - ref.min()) / rms))
        print("SNR %.3f: %s; class-average PSNR %s dB; %.0f s" % (
            snr, " ".join("round %d purity %.3f NMI %.3f" % (h["round"], h["purity"], h["nmi"]) for h in hist),
            " ".join("%.1f" % p for p in psnr), time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main()
