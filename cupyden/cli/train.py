"""cupyden-train: train a denoiser on pairs of noisy views (Noise2Noise) or clean + noise.

With no INPUT and no --store, runs the embedded default: a 2048 x 2048 crop of a real K2
counting-mode micrograph (shipped in the package), split into two halves by a binomial
count split, binned by 4 (3.4 Å/px), DnCNN-12/32 trained on the top three quarters,
judged on the bottom quarter, then the crop denoised (denoised.mrc, before_after.png).

On a GPU, micrographs given as INPUT train by the recipe topaz-finetune (--recipe):
Topaz-Denoise's general model fine-tuned for 4 minutes (+8.81 dB on the K2 held-out rows
in 240 s on an H200; +6.2 dB for DnCNN-12/32; benchmarks/k2_protocol.py).

Usage:
  cupyden-train [options] [INPUT...]
  cupyden-train -h | --help

Pair sources (--pairs), INPUT being MRC files, folders or globs:
  count-split   each INPUT is one counting-mode micrograph; its counts are split
                binomially into two halves (needs Poisson-like noise; see --dose)
  movie         each INPUT is a movie, an MRC stack (.mrc, .mrcs) or a TIFF (.tif,
                .tiff; LZW needs 'cupyden[movies]'): even/odd frame sums (--gain)
  halves        INPUT are the even half micrographs, --odd the odd ones, paired by name;
                or even/odd half tomograms (MRC or TIFF volumes), or a RELION 5
                tomograms STAR file (rlnTomoReconstructedTomogramHalf1/Half2; no --odd):
                a 3-D U-Net (--arch unet3d) on subvolumes of --patch-size^3, rotated
                about the tilt axis (y) and flipped; validation and held-out slabs
                along y
  gaussian      each INPUT is a clean image; Gaussian noise of sigma --noise-level
  poisson       each INPUT is a clean image; Poisson counts of mean --noise-level per px
  f2fd          one INPUT, a tomogram (MRC or TIFF volume) or a single micrograph (MRC
                or TIFF): F2Fd's Fourier-perturbed pairs of the one image, F2Fd's
                dropout U-Net (3-D or 2-D); ends by denoising the INPUT
                (denoised.mrc, central_slice.png)

Options:
  --recipe NAME       The values of the options marked (recipe) that are not given:
                      plain (the defaults shown: DnCNN-12/32, fp32, 16 x 64^2 patches);
                      topaz-finetune (--arch topaz --init topaz:unet --normalize
                      meanstd --precision fp16 --patch-size 384 --stride 128 --batch-size
                      12 --lr 0.0002 --resplit --ema 0.9995 --lr-schedule cosine --warmup
                      100 --val-every 250 --val-patches 64; and --max-minutes 4 with
                      steps 1000000 unless --steps or --epochs is given; --resplit only
                      for count-split pairs at --bin 1); topaz-scratch (the same without
                      its --init, and --lr 0.001); auto = topaz-finetune on a GPU with
                      cuDNN for micrographs from INPUT (count-split, movie, halves),
                      topaz-scratch there when topaz-em (Topaz's weights) is not
                      installed, else plain (the CPU, the embedded default, --store,
                      tomograms, f2fd, gaussian, poisson); a resumed run keeps its
                      recipe. The log's first line says which and why [default: auto]
  --pairs SOURCE      Pair source, as above [default: count-split]
  --odd PATTERN       Odd half micrographs or tomograms (folder or glob) for --pairs
                      halves.
  --store H5          Train from an existing patch store instead of building one.
  --arch ARCH         (recipe) dncnn, unet, or topaz (Topaz-Denoise's UDenoiseNet: 48
                      features, 5 poolings, receptive field 298 px; patches best a multiple
                      of 32 px) for micrographs; unet3d (cryoCARE-like 3-D U-Net: 3
                      poolings, receptive field 96 voxels) for tomograms; auto = the
                      recipe's; plain: unet3d for tomograms, else dncnn; --pairs f2fd:
                      always F2Fd's U-Net [default: auto]
  --init W            (recipe) Start from these weights (fine-tuning): a model.h5 of
                      cupyden-train, or topaz:NAME, a pretrained Topaz-Denoise model (unet,
                      unet-small, unet-v0.2.1, fcnn; needs topaz-em installed, not PyTorch);
                      the architecture is the weights' (--arch and its sizes are then
                      ignored; a recipe's --init is left out when an --arch other than its
                      own is given).
  --depth N           DnCNN conv layers [default: 12]
  --width N           DnCNN channels [default: 32]
  --base N            U-Net channels at the first level; auto = 32 (unet), 16
                      (unet3d, cryoCARE's) [default: auto]
  --loss LOSS         Base loss, mse or l1 [default: mse]
  --fourier-weight W  Weight of the Fourier loss (MSE of log power spectra, on the scale
                      of the pixel MSE); the seeds used 0.1 [default: 0]
  --fourier-frc       Weight the Fourier loss per ring by sqrt(2 FRC / (1 + FRC)) of the
                      two views (rings without signal weigh ~0).
  --ssim-weight W     Weight of the SSIM loss 1 - SSIM (11 px Gaussian window, sigma
                      1.5 px) [default: 0]
  --msssim-weight W   Weight of the multi-scale SSIM loss 1 - MS-SSIM (as many 2x
                      scales as fit the 11 px window, up to 5) [default: 0]
  --grad-weight W     Weight of the gradient loss (L1 of finite differences)
                      [default: 0]
  --lr LR             (recipe) Adam learning rate (per step, unitless); auto = the recipe's;
                      plain: 0.001, and 0.0001 with --pairs f2fd (F2Fd's U-Net diverged at
                      0.001 on a 256^3 tomogram, benchmarks/RESULTS.md) [default: auto]
  --lr-schedule S     (recipe) constant, step, cosine or plateau; with --max-minutes, cosine
                      ends when the time does (its length re-estimated at each validation
                      after the first, at most --steps) [default: constant]
  --warmup N          (recipe) Steps of linear learning-rate warm-up [default: 0]
  --lr-step N         step: steps between reductions [default: 1000]
  --lr-gamma G        step and plateau: factor of each reduction [default: 0.5]
  --patience N        plateau: validations without improvement before a reduction
                      [default: 3]
  --batch-size N      (recipe) Patch pairs per step [default: 16]
  --patch-size PX     (recipe) Patch side in pixels (after binning) [default: 64]
  --stride PX         (recipe) Step between training patch origins in pixels; auto = the
                      recipe's; plain: 32, and for tomograms the largest of the patch size,
                      its half and its quarter that gives at least 512 training subvolumes
                      per tomogram [default: auto]
  --steps N           (recipe) Optimisation steps; auto = the recipe's; plain: 150 for
                      the embedded crop (under 3 minutes on 2 CPU cores), else 2000
                      [default: auto]
  --epochs E          Passes over the training patches; overrides --steps when given.
  --max-minutes M     (recipe) Stop (after a last validation) once training has run this
                      long, in minutes; 0 = no limit. With --lr-schedule cosine the schedule
                      ends when the time does: give a large --steps and let the time decide
                      (Li et al., ICLR 2020, "Budgeted Training") [default: 0]
  --val-fraction F    Share of each micrograph's rows (a tomogram's y extent), below the
                      training rows, that validate: they choose the best checkpoint
                      [default: 0.125]
  --holdout-fraction F  Share of each micrograph's rows at the bottom that neither
                      training nor the checkpoint choice sees; the evaluation printed
                      at the end scores the first micrograph's (with 0 it scores the
                      validation rows, and says so) [default: 0.125]
  --val-every N       (recipe) Validate, log and checkpoint every N steps [default: 50]
  --val-patches N     (recipe) At most this many validation patches [default: 256]
  --keep K            What model.h5 holds: best (the weights of the lowest validation
                      loss) or last (those of the last validation: with --max-minutes
                      and a cosine, the annealed end) [default: best]
  --ema D             (recipe) Validate, keep (model.h5) and denoise with the exponential
                      moving average of the weights, decay D per step (e.g. 0.999: about the
                      last 1000 steps; warmed up as min(D, (1 + t) / (10 + t)) at step t,
                      TensorFlow's rule); 0 = off, the weights themselves [default: 0]
  --resplit           (recipe) Draw a new count split of every training batch: the same
                      signal with new noise at every step (count-split pairs, --bin 1;
                      recorrupted-to-recorrupted training, Pang et al. 2021)
  --bin B             Fourier-crop binning factor applied to both views after splitting;
                      auto = 4 for the embedded crop, else 1 [default: auto]
  --dose D            Dose in e/A^2 for the count split; auto = from the FEI extended
                      header, else estimated from the noise [default: auto]
  --angpix A          Pixel size of the inputs in Å/px (before --bin); auto = from
                      each file's header [default: auto]
  --drop-frames N     Movie frames to drop at the start [default: 0]
  --align             Align movie frames by whole-pixel shifts before summing.
  --gain FILE         Gain reference (MRC or TIFF) multiplied into every movie frame;
                      TIFF movies and gains are read flipped along the slow axis, as
                      RELION reads TIFF.
  --gain-rot N        Rotate the gain by N x 90 degrees clockwise, 0-3: as RELION's
                      gain_rot and MotionCor2's RotGain [default: 0]
  --gain-flip N       Then flip it: 0 none, 1 upside down, 2 left to right: as RELION's
                      gain_flip and MotionCor2's FlipGain [default: 0]
  --noise-level L     Sigma (gaussian, image units) or mean counts per px (poisson)
                      [default: 1.0]
  --normalize M       (recipe) robust (median, MAD), percentile (95th percentile of
                      |x - mean|) or meanstd (mean, standard deviation: Topaz's, for its
                      weights) [default: robust]
  --float16-store     Keep patches as float16 in the store (half the disk).
  --precision P       (recipe) fp32, tf32 or fp16: the convolutions' arithmetic on a GPU
                      with cuDNN (fp16: float16 weights and activations, float32 master
                      weights, dynamic loss scaling); the CPU runs fp32 [default: fp32]
F2Fd (--pairs f2fd; names as in F2Fd; --patch-size is its subtomo_length, a
multiple of 32):
  --p P               Probability of inverting a Fourier coefficient's sign [default: 0.1]
  --Vmask-pct F       Probability of dropping a block of Fourier voxels [default: 0.5]
  --volumetric-scale-factor N  Side of those blocks, Fourier voxels [default: 8]
  --dropout-p F       Dropout probability of the U-Net's decoder [default: 0.3]
  --total-samples N   Fourier masks in the pool [default: 20]
  --n-bernoulli-samples N  Samples averaged into one input or target; 1 pairs single
                      samples as F2Fd's code does (cupyden/f2fd.py) [default: 1]
  --features N        U-Net features [default: 48]
  --samples K         Denoising: Fourier-sample inputs averaged [default: 4]
  --passes T          Denoising: dropout passes per input [default: 4]
  --seed N            Seed of the split, patches, batches and weights [default: 0]
  -d, --device N      GPU number, -1 for the CPU, or auto; when not given,
                      CUPYDEN_DEVICE, else auto (the first GPU if any).
  --threads N         CPU threads for cupyden's kernels and BLAS; auto = the CPUs this
                      process may use (affinity, cgroup quota), or OMP_NUM_THREADS or
                      OPENBLAS_NUM_THREADS when set [default: auto]
  -o, --output DIR    Output folder (created) [default: cupyden-out]
  --resume CKPT       Continue from a checkpoint.h5 of an earlier run (same options).
  --overwrite         Replace the model of an earlier run in DIR (refused otherwise).
Several GPUs (data parallel: one process per GPU, the gradients summed by NCCL once per
step; --batch-size is the global batch; cupyden/distributed.py says how to launch across
nodes, e.g. under SLURM with srun):
  --gpus LIST         GPUs of this host, e.g. 0,1: one process each; the store is built
                      and the model evaluated on the first.
  --rendezvous PATH   Several nodes: this process is one rank; rank 0 builds the store and
                      writes the NCCL id to PATH (a new file on a shared file system), the
                      other ranks wait for it; each rank's GPU is -d, else SLURM_LOCALID.
  --rank N            This process's rank with --rendezvous; default: SLURM_PROCID.
  --world-size N      Number of ranks with --rendezvous; default: SLURM_NTASKS.
  --nccl-timeout S    A rank without training progress for S seconds (a peer died or
                      hangs) exits [default: 600]
  --no-progress       No progress bar.
  -h, --help          Show this help.

Outputs in DIR: patches.h5 (the patch store), model.h5 (best validation loss),
checkpoint.h5 (latest, with Adam state), history.csv, loss_curve.png, and for pair sources
with two halves an evaluation of the first micrograph's held-out rows (printed, and in
evaluation.json, which names the rows and how they were used).
"""

from ..errors import InputError
from ..functional.conv import PRECISIONS
from ..pipeline.train import ARCHS, NORMALIZATIONS, SOURCES, train
from ..recipes import KEYS, NAMES
from .common import as_choice, as_float, as_int, given_options, run


def _parse(args, given):
    """(inputs, output folder, keyword arguments of ``cupyden.pipeline.train.train``).

    ``given``: the options on the command line (``common.given_options``); the options a
    recipe sets (``recipes.KEYS``) that are not given are passed as None, so that the
    recipe gives them.
    """
    kw = {"recipe": as_choice(args, "--recipe", NAMES),
          "pairs": as_choice(args, "--pairs", SOURCES),
          "arch": None if args["--arch"] == "auto" else as_choice(args, "--arch", ARCHS),
          "base": None if args["--base"] == "auto" else as_int(args, "--base", 1),
          "stride": None if args["--stride"] == "auto" else as_int(args, "--stride", 1),
          "loss": as_choice(args, "--loss", ("mse", "l1")),
          "normalize": as_choice(args, "--normalize", NORMALIZATIONS),
          "lr": None if args["--lr"] == "auto" else as_float(args, "--lr", 0),
          "val_fraction": as_float(args, "--val-fraction", 0.01, 0.9),
          "holdout_fraction": as_float(args, "--holdout-fraction", 0, 0.9),
          "init": args["--init"],
          "lr_schedule": as_choice(args, "--lr-schedule", ("constant", "step", "cosine", "plateau")),
          "keep": as_choice(args, "--keep", ("best", "last")), "resplit": args["--resplit"],
          "ema": as_float(args, "--ema"),
          "fourier_frc": bool(args["--fourier-frc"]),
          "warmup": as_int(args, "--warmup", 0), "lr_step": as_int(args, "--lr-step", 1),
          "lr_gamma": as_float(args, "--lr-gamma", 0, 1), "patience": as_int(args, "--patience", 1),
          "noise_level": as_float(args, "--noise-level", 0),
          "precision": as_choice(args, "--precision", PRECISIONS),
          "epochs": as_float(args, "--epochs", 0) if args["--epochs"] else None,
          "max_minutes": as_float(args, "--max-minutes", 0),
          "binning": None if args["--bin"] == "auto" else as_int(args, "--bin", 1),
          "steps": None if args["--steps"] == "auto" else as_int(args, "--steps", 1),
          "dose": None if args["--dose"] == "auto" else as_float(args, "--dose", 0),
          "angpix": None if args["--angpix"] == "auto" else as_float(args, "--angpix", 1e-6),
          "overwrite": args["--overwrite"],
          "odd": args["--odd"], "store": args["--store"], "align": args["--align"],
          "float16_store": args["--float16-store"], "gain": args["--gain"],
          "gain_rot": as_int(args, "--gain-rot", 0), "gain_flip": as_int(args, "--gain-flip", 0),
          "device": args["--device"], "resume": args["--resume"],
          "progress": not args["--no-progress"], "rendezvous": args["--rendezvous"],
          "nccl_timeout": as_float(args, "--nccl-timeout", 1),
          "f2fd": {"p": as_float(args, "--p", 0, 1), "Vmask_pct": as_float(args, "--Vmask-pct", 0, 1),
                   "dropout_p": as_float(args, "--dropout-p", 0, 0.99),
                   "volumetric_scale_factor": as_int(args, "--volumetric-scale-factor", 1),
                   "total_samples": as_int(args, "--total-samples", 2),
                   "n_bernoulli_samples": as_int(args, "--n-bernoulli-samples", 1),
                   "features": as_int(args, "--features", 1), "samples": as_int(args, "--samples", 1),
                   "passes": as_int(args, "--passes", 1)}}
    for key, term in (("fourier", "fourier"), ("ssim", "ssim"), ("msssim", "msssim"), ("grad", "grad")):
        kw[key + "_weight"] = as_float(args, "--%s-weight" % term, 0)
    for key in ("depth", "width", "batch-size", "patch-size", "val-every",
                "val-patches", "drop-frames", "seed"):
        kw[key.replace("-", "_")] = as_int(args, "--" + key, {"drop-frames": 0, "seed": 0,
                                                               "depth": 2}.get(key, 1))
    if args["--gpus"]:
        try:
            kw["gpus"] = [int(g) for g in args["--gpus"].split(",")]
        except ValueError:
            raise InputError("--gpus must be GPU numbers separated by commas, e.g. 0,1; got %r"
                             % args["--gpus"])
    for key in ("rank", "world-size"):
        if args["--" + key] is not None:
            kw[key.replace("-", "_")] = as_int(args, "--" + key, 0)
    kw.update({k: None for k in KEYS if "--" + k.replace("_", "-") not in given})
    return args["INPUT"], args["--output"], kw


def main(argv=None):
    """Entry point of cupyden-train; returns the exit code."""
    def body(args):
        inputs, out, kw = _parse(args, given_options(__doc__, argv))
        train(inputs, out, log=print, **kw)
    return run(__doc__, argv, body, "cupyden-train")
