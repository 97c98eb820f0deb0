"""Recipes: named sets of ``cupyden-train``'s option values, and the choice of one.

The one definition of the recipes, for the command (``--recipe NAME [default: auto]``), the
Python API (``cupyden.train(..., recipe="plain")``) and ``benchmarks/k2_protocol.py``. A
recipe gives the value of every option in :data:`KEYS` that the caller leaves None (the
command leaves None the options not given on its command line); an option given always
wins. ``pipeline.train.resolve_options`` applies it, then resolves the remaining automatic
values as it always did.

    plain            DnCNN-12/32, fp32, 16 x 64^2 patches, Adam at a constant 0.001, 2000
                     steps (150 on the embedded crop): the defaults cupyden always had.
    topaz-finetune   Topaz-Denoise's general UDenoiseNet (Bepler et al. 2020;
                     ``--init topaz:unet``, read from the installed topaz-em without
                     PyTorch) fine-tuned in float16 on 12 x 384^2 patches with a new count
                     split of every batch (``--resplit``; Pang et al. 2021), Adam at 0.0002
                     on a cosine with 100 warm-up steps, validated, kept and applied as the
                     weights' moving average (``--ema 0.9995``), for 4 minutes. On the K2
                     protocol (one H200, 240 s of training): +8.81 dB on rows training never
                     saw (15456 steps, the patches held on the GPU), DnCNN-12/32 +6.2 dB,
                     Topaz-Denoise trained by its own CLI +7.6 dB
                     (benchmarks/k2_protocol.py, benchmarks/RESULTS.md).
    topaz-scratch    The same network and training without Topaz's weights, at lr 0.001.

The length of a topaz recipe is its time: with neither ``steps`` nor ``epochs`` given it
trains for ``max_minutes`` 4 with ``steps`` 1000000, and the cosine's length is
re-estimated at every validation so that it ends with the time (Li et al., ICLR 2020,
"Budgeted Training"); ``max_minutes`` alone keeps steps 1000000; ``steps`` (or ``epochs``)
alone trains that long, without a time limit.

"auto" (the command's default; :func:`choose`) picks topaz-finetune when the run trains on
a GPU with cuDNN (the recipe's float16 needs it) on 2-D micrograph pairs read from INPUT
files (count-split, movie, halves of micrographs), topaz-scratch there when Topaz-Denoise's
pretrained weights are not installed, and plain otherwise: the CPU, the embedded default,
a patch store (its patch size is fixed), tomograms, f2fd, synthetic noise. A resumed run
keeps the recipe its checkpoint records.
"""

from .errors import InputError

#: The options a recipe sets (keywords of ``cupyden.train``; ``--`` + the key with ``-`` for
#: ``_`` is the command's option). None: the automatic value (``resolve_options``).
PLAIN = {"arch": None, "init": None, "normalize": "robust", "precision": "fp32",
         "patch_size": 64, "stride": None, "batch_size": 16, "lr": None, "resplit": False,
         "ema": 0.0, "lr_schedule": "constant", "warmup": 0, "val_every": 50,
         "val_patches": 256, "steps": None, "max_minutes": 0.0}
KEYS = tuple(PLAIN)

#: The K2 recipe (benchmarks/k2_protocol.py says how each value was found). The order is
#: that of the options in :func:`options_text`.
TOPAZ_FINETUNE = {"arch": "topaz", "init": "topaz:unet", "normalize": "meanstd",
                  "precision": "fp16", "patch_size": 384, "stride": 128, "batch_size": 12,
                  "lr": 0.0002, "resplit": True, "ema": 0.9995, "lr_schedule": "cosine",
                  "warmup": 100, "val_every": 250, "val_patches": 64, "steps": 1000000,
                  "max_minutes": 4.0}

RECIPES = {"plain": PLAIN, "topaz-finetune": TOPAZ_FINETUNE,
           "topaz-scratch": dict(TOPAZ_FINETUNE, init=None, lr=0.001)}
NAMES = ("auto",) + tuple(RECIPES)
#: What a recipe's name says in the log.
SUMMARY = {"plain": "DnCNN-12/32", "topaz-finetune": "Topaz-Denoise's UDenoiseNet fine-tuned",
           "topaz-scratch": "Topaz-Denoise's UDenoiseNet from scratch"}
#: The options that fix a run's length (not in :func:`options_text`: they depend on what
#: the caller gives, see the module's docstring).
LENGTH = ("steps", "max_minutes")
#: What each two-view pair source trains on, for the log.
_DATA = {"count-split": "count-split micrographs", "movie": "even/odd frame sums of movies",
         "halves": "half micrographs"}


def options_text(name):
    """A recipe as ``cupyden-train`` options, without its length (:data:`LENGTH`).

    Parameters
    ----------
    name : str
        A key of :data:`RECIPES`.

    Returns
    -------
    str
        e.g. ``"--arch topaz --init topaz:unet ... --val-patches 64"`` (options at their
        automatic value and flags that are off are left out).
    """
    words = []
    for key, value in RECIPES[name].items():
        if key in LENGTH or value is None or value is False:
            continue
        words.append("--" + key.replace("_", "-"))
        if value is not True:
            words.append("%g" % value if isinstance(value, float) else str(value))
    return " ".join(words)


def weights_installed(spec):
    """Whether the pretrained weights named by an ``init`` value can be read here:
    ``topaz:NAME`` needs the topaz-em package (located without importing it, so without
    PyTorch; ``io.torch_pickle.topaz_pretrained``); any other value counts as present (a
    missing model.h5 is reported when it is read)."""
    if not spec or not spec.startswith("topaz:"):
        return True
    from .io.torch_pickle import topaz_pretrained
    from .models.topaz import PRETRAINED
    entry = PRETRAINED.get(spec[len("topaz:"):])
    if entry is None:
        return True                          # an unknown name: reported when it is read
    try:
        topaz_pretrained(entry[0])
    except InputError:
        return False
    return True


def device_problem(spec=None):
    """Why a run on device ``spec`` cannot take a topaz recipe, or None: it trains on a GPU
    whose convolutions run through cuDNN (their float16 needs it).

    Parameters
    ----------
    spec : str or int or None
        ``backend.select_device``'s: a GPU number, -1, "auto", or None (CUPYDEN_DEVICE,
        else the first GPU if any): the device the run will use.

    Returns
    -------
    str or None

    Raises
    ------
    InputError
        A GPU was asked for and cannot be used (``backend.select_device``).
    """
    from . import backend
    from .settings import cudnn_problem
    if not backend.select_device(spec).is_gpu:
        return "the CPU"
    why = cudnn_problem()
    return None if why is None else "a GPU without cuDNN (%s)" % why


def choose(name, o, gpu_problem, resume=None):
    """The recipe of a run, and why.

    Parameters
    ----------
    name : str
        "auto" or a key of :data:`RECIPES`.
    o : dict
        The run's options so far (``resolve_options``): "pairs", "inputs", "store",
        "volumes", "embedded", "init" (as given).
    gpu_problem : callable
        () -> None when the run trains on a GPU with cuDNN, else a few words why not
        (:func:`device_problem`); asked only for "auto" on micrograph pairs.
    resume : str or None
        The checkpoint.h5 a run resumes: "auto" then takes the recipe it records
        (checkpoints written before recipes: plain).

    Returns
    -------
    name : str
    why : str
        For the log line ``recipe NAME (WHY)``.

    Raises
    ------
    InputError
        An unknown name; a topaz recipe for tomograms or --pairs f2fd.
    """
    if name not in NAMES:
        raise InputError("--recipe must be one of %s, got %r" % (", ".join(NAMES), name))
    if name != "auto":
        if name != "plain" and (o["volumes"] or o["pairs"] == "f2fd"):
            raise InputError("--recipe %s trains Topaz-Denoise's 2-D network on micrographs; "
                             "use --recipe plain for %s" % (
                                 name, "tomograms" if o["volumes"] else "--pairs f2fd"))
        return name, "--recipe %s: %s" % (name, SUMMARY[name])
    if resume:
        from .io.checkpoint import load_checkpoint
        saved = load_checkpoint(resume)["config"].get("recipe", "plain")
        return saved, "that of the checkpoint resumed, %s" % resume
    if o["embedded"]:
        return "plain", "the embedded default"
    if o["store"]:
        return "plain", "a patch store, whose patch size is fixed"
    if o["volumes"]:
        return "plain", "tomograms"
    if o["pairs"] not in _DATA:
        return "plain", "--pairs %s" % o["pairs"]
    why_not = gpu_problem()
    if why_not is not None:
        return "plain", why_not
    data = "a GPU and %s" % _DATA[o["pairs"]]
    if o["init"] is None and not weights_installed(TOPAZ_FINETUNE["init"]):
        return "topaz-scratch", ("%s, without Topaz-Denoise's pretrained weights (pip install "
                                 "topaz-em for topaz-finetune); --recipe plain for "
                                 "DnCNN-12/32" % data)
    return "topaz-finetune", "%s; --recipe plain for DnCNN-12/32" % data


def apply(name, o):
    """Give the options that ``o`` leaves None the values of recipe ``name``.

    Three values are given only where they apply: the time budget (``max_minutes``) when
    neither ``steps`` nor ``epochs`` is given; ``resplit`` for count-split pairs without
    binning (``o["bin"]`` 1); ``init`` unless an ``arch`` other than the recipe's is given
    (the weights fix the architecture).

    Parameters
    ----------
    name : str
        A key of :data:`RECIPES`.
    o : dict
        The run's options (``resolve_options``), with "pairs", "bin", "epochs"; changed in
        place.

    Returns
    -------
    list of str
        The recipe's values left out, and why, for the log.
    """
    recipe, notes = RECIPES[name], []
    timed = o["steps"] is None and not o["epochs"]
    arch = o["arch"]
    for key, value in recipe.items():
        if o[key] is not None:
            continue
        if key == "max_minutes" and not timed:
            value = PLAIN["max_minutes"]
        elif key == "resplit" and value and (o["pairs"] != "count-split" or o["bin"] != 1):
            value = False
            notes.append("--resplit left out: it needs count-split pairs at --bin 1")
        elif key == "init" and value and arch not in (None, recipe["arch"]):
            value = None
            notes.append("--init %s left out: --arch %s" % (recipe["init"], arch))
        o[key] = value
    return notes
