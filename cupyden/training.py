"""The training loop: one place, readable top to bottom.

One step is: model.forward -> loss.forward -> loss.backward -> model.backward_params (the
backward pass without the input's gradient, which nothing needs) -> Adam.
``fit`` adds what a run needs around it: the loader, validation every N steps, the best
model kept, a checkpoint to resume from, history.csv and the loss curve.

Data parallel (``comm``, see ``cupyden.distributed``): each of R ranks takes 1/R of every
global batch; after the backward pass the flat gradient buffer is summed over the ranks
(one all-reduce per step) and Adam divides it by R while it unscales (its ``grad_scale``),
so every rank applies the gradient of the global batch's mean loss, as one process with
the whole batch would, and the parameters stay identical (checked at each validation).

Weight average (``config["ema"]``, a decay D in (0, 1); 0 or absent: none): after every
step the float32 weights are folded into their exponential moving average
(``optim.ema``); validation, and so the best-checkpoint choice, scores the average,
model.h5 holds it, and checkpoint.h5 holds it beside the weights themselves so that a
resumed run continues it.

Time budget (``max_seconds``): the run stops after validating once its training time
exceeds the budget; with the cosine schedule the curve's length T is re-estimated at
every validation so that the learning rate reaches its floor when the time runs out
(``optim.schedules``; Li, Yumer & Ramanan, ICLR 2020). With several ranks T is rank 0's
estimate, shared with the others, so every rank applies the same learning rate.
"""

import contextlib
import csv
import os
import shutil
import time

import numpy

from . import report
from .backend import get_array_module, synchronize
from .errors import InputError
from .functional.conv import set_precision
from .io.atomic import atomic_output
from .io.checkpoint import load_checkpoint, non_finite, save_checkpoint
from .io.torch_pickle import read_state_dict, topaz_pretrained
from .losses import Objective
from .losses.fourier import frc_ring_weights
from .models import build_model
from .models.topaz import PRETRAINED, from_topaz_state
from .optim import Adam, Parameters, WeightAverage
from .optim.loss_scale import LossScaler
from .optim.schedules import LRSchedule

HISTORY_FIELDS = ("step", "train_loss", "val_loss", "lr", "seconds")


def as_objective(loss):
    """An :class:`~cupyden.losses.Objective` from a loss name ("mse") or an Objective."""
    return loss if isinstance(loss, Objective) else Objective([(loss, 1.0)])


class Solo:
    """The communicator of a one-process run: rank 0 of 1, reductions are identities.

    A data-parallel communicator (``cupyden.distributed.NcclComm``) has the same members:
    ``rank``, ``size``, ``allreduce_(array, op)`` (in place, on the device) and
    ``values(list, op)`` (host numbers reduced over the ranks, as a float64 array).
    """
    rank, size = 0, 1

    def allreduce_(self, a, op="sum"):
        return a

    def values(self, v, op="sum"):
        return numpy.asarray(v, numpy.float64)


def share(n, comm):
    """[start, stop) of ``comm.rank``'s contiguous share of n items (sizes differ by <= 1)."""
    return n * comm.rank // comm.size, n * (comm.rank + 1) // comm.size


def train_step(model, params, optimizer, loss, x, target, scaler=None, comm=None):
    """One optimisation step on a batch.

    Parameters
    ----------
    model : cupyden.models.base.Model
        In training mode.
    params : cupyden.optim.Parameters
        The model's flat parameter buffer.
    optimizer : cupyden.optim.Adam
    loss : str or cupyden.losses.Objective
        A loss name ("mse", "l1", ...) or a weighted sum of losses.
    x, target : array (N, C, H, W)
        Input patches and their targets (the other noisy view, or the clean image).
    scaler : cupyden.optim.loss_scale.LossScaler or None
        For a float16 model: the loss gradient is multiplied by its scale before the
        backward pass, and a step whose gradients are not finite is skipped.
    comm : communicator or None
        Data parallel: x, target are this rank's share of the global batch; the gradients
        are summed over the ranks before the update (see the module's docstring).

    Returns
    -------
    0-d array
        This rank's loss before the update (on the device; no synchronisation without a
        scaler).
    """
    comm = comm or Solo()
    objective = as_objective(loss)
    y = model.forward(x.astype(model.dtype, copy=False))
    value, cache = objective.forward(y.astype(target.dtype, copy=False), target)
    params.zero_grad()
    dy = objective.backward(cache)
    if scaler is None:
        model.backward_params(dy.astype(model.dtype, copy=False))
        comm.allreduce_(params.grad)          # sum of the ranks' mean-loss gradients
        optimizer.step(grad_scale=float(comm.size))  # / R: the global mean's gradient
        return value
    model.backward_params((dy * scaler.scale_on(get_array_module(dy))).astype(model.dtype))
    comm.allreduce_(params.grad)              # float32 master gradients: what Adam reads
    # the same verdict on every rank; the update skips itself after an overflow
    optimizer.step(verdict=scaler.check(params.grad, comm.size))
    return value


def evaluate(model, loss, x, target, batch_size=None):
    """Mean loss of the model on (x, target), in batches, without keeping caches.

    Parameters
    ----------
    model : Model
    loss : str or Objective
    x, target : arrays (N, C, H, W) of the model's array module
    batch_size : int or None
        None evaluates everything at once.

    Returns
    -------
    float
    """
    objective = as_objective(loss)
    keep = [(layer, layer.training, layer.keep_cache) for _, layer in model.named_layers()]
    model.eval()
    try:
        B = batch_size or len(x)
        total = 0.0
        for i in range(0, len(x), B):
            y = model.forward(x[i:i + B].astype(model.dtype, copy=False))
            value, _ = objective.forward(y.astype(target.dtype, copy=False), target[i:i + B])
            total += float(value) * len(x[i:i + B])
    finally:
        for layer, training, keep_cache in keep:
            layer.training, layer.keep_cache = training, keep_cache
    return total / len(x)


def build_objective(config, store, xp):
    """The training objective from a config: the base loss plus weighted Fourier, SSIM and
    gradient terms; FRC ring weights (when asked) from up to 256 training pairs."""
    w = config.get("loss_weights", {})
    terms = [(config["loss"], 1.0)] + [(k, w.get(k, 0.0))
                                       for k in ("fourier", "ssim", "msssim", "gradient")]
    fourier_weights = None
    if config.get("fourier_frc") and w.get("fourier"):
        n = min(256, store.size("train"))
        a, b = store.read("train", numpy.arange(n))
        fourier_weights = frc_ring_weights(xp.asarray(a), xp.asarray(b)).astype(numpy.float32)
    return Objective(terms, fourier_weights)


def check_identical(params, comm, step):
    """Raise when the ranks' parameters differ: the float64 sum and sum of squares of the
    trained buffer, reduced by max and by min over the ranks (one small all-reduce).

    Raises
    ------
    RuntimeError
    """
    xp = params.xp
    p = params.trained
    c = [float(xp.sum(p, dtype=numpy.float64)), float(xp.sum(p.astype(numpy.float64) ** 2))]
    hi = comm.values(c + [-v for v in c], "max")
    if hi[0] != -hi[2] or hi[1] != -hi[3]:
        raise RuntimeError("the ranks' parameters differ at step %d (checksums from %r to %r):"
                           " the ranks no longer train one model" % (step, [-hi[2], -hi[3]],
                                                                     list(hi[:2])))


def read_model_file(spec):
    """The run config and the weights of a model file: what ``cupyden-denoise`` applies and
    what ``--init`` starts from.

    Parameters
    ----------
    spec : str
        A model.h5 or checkpoint.h5 written by cupyden-train, or ``topaz:NAME`` for a
        pretrained Topaz-Denoise model (NAME in ``models.topaz.PRETRAINED``: unet,
        unet-small, unet-v0.2.1, fcnn; read from the installed topaz-em without PyTorch,
        Bepler et al. 2020).

    Returns
    -------
    config : dict
        The checkpoint's config ("model": the model's config, which ``build_model``
        rebuilds; "bin", "normalize", ...); for Topaz's models {"model", "bin": 1,
        "normalize": "meanstd"}, as Topaz bins nothing and scales by mean and standard
        deviation.
    weights : dict of name -> host array

    Raises
    ------
    InputError
        Unknown Topaz model, topaz-em missing, or an unreadable checkpoint (or one holding
        NaN or Inf).
    """
    if spec.startswith("topaz:"):
        name = spec[len("topaz:"):]
        if name not in PRETRAINED:
            raise InputError("unknown Topaz model %r (known: %s)" % (name, ", ".join(PRETRAINED)))
        filename, model_config = PRETRAINED[name]
        weights = from_topaz_state(read_state_dict(topaz_pretrained(filename)))
        return {"model": dict(model_config), "bin": 1, "normalize": "meanstd"}, weights
    ck = load_checkpoint(spec)
    return ck["config"], ck["weights"]


def initial_weights(spec):
    """The model config and weights to start a training run from (fine-tuning):
    :func:`read_model_file` without the run's settings.

    Returns
    -------
    config : dict
        The model's config (``build_model`` rebuilds it).
    weights : dict of name -> host array

    Raises
    ------
    InputError
        As :func:`read_model_file`.
    """
    config, weights = read_model_file(spec)
    return dict(config["model"]), weights


def read_history(path, upto=None):
    """Rows of history.csv (as dicts of numbers) with step <= upto.

    Raises
    ------
    InputError
        The file is not a history.csv written by ``fit``.
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        if rows and set(rows[0]) != set(HISTORY_FIELDS):
            raise ValueError("columns %s" % sorted(rows[0]))
    except (UnicodeDecodeError, ValueError, TypeError, csv.Error) as exc:
        raise InputError("%s: not a history.csv written by cupyden-train (%s)"
                         % (path, str(exc).splitlines()[0][:80]))
    for r in rows:
        r["step"] = int(r["step"])
    return [r for r in rows if upto is None or r["step"] <= upto]


def write_history(path, rows):
    """Write history.csv atomically."""
    with atomic_output(path, ".csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in HISTORY_FIELDS})


def _stop_if_diverged(step, train_loss, val_loss, weights, adam, history, out_dir):
    """Refuse to go on, or to write a checkpoint, once training has diverged.

    Called at each validation, where the running training loss has just been brought to
    the host (the one synchronisation of the interval) and the weights and Adam's moments
    have been copied there to be saved: the checks cost no extra device work.

    Parameters
    ----------
    step : int
    train_loss : float
        Mean training loss since the last validation (0 with float16 loss scaling, whose
        skipped steps are expected to have non-finite losses).
    val_loss : float
    weights, adam : dicts of host arrays, or None
        ``Model.state()`` and ``Adam.state()`` (None on the ranks of a data-parallel run
        that write no checkpoint: they check the losses, which every rank shares).
    history : list of dict
        The rows written so far (the last good validation is the last row).
    out_dir : str

    Raises
    ------
    InputError
        A loss, a weight or an Adam moment is NaN or Inf; the message names the last good
        checkpoint, which is kept as it was.
    """
    what = None
    if not numpy.isfinite(train_loss):
        what = "the training loss is %s" % train_loss
    elif not numpy.isfinite(val_loss):
        what = "the validation loss is %s" % val_loss
    elif weights is not None:
        bad = non_finite({"weights": weights, "Adam": {"m": adam["m"], "v": adam["v"]}})
        if bad is not None:
            what = "%s holds NaN or Inf" % bad
    if what is None:
        return
    kept = ("the checkpoint of step %d is kept in %s" % (history[-1]["step"], out_dir)
            if history else "no checkpoint was written")
    raise InputError("training diverged at step %d: %s (the learning rate is likely too "
                     "high); %s; train again with a lower --lr" % (step, what, kept))


def _carry_over(resume, start, out_dir, best):
    """The best model and the history of a resumed run, in ``out_dir``.

    A run resumed into another folder gets the earlier run's model.h5 (the best so far,
    when its step is the checkpoint's best step) and its history rows up to the
    checkpoint; without that model.h5, ``best`` is reset so that the next validation
    writes one. Either way ``out_dir`` ends with a model.h5, even when validation never
    improves or the checkpoint is already at the last step.

    Parameters
    ----------
    resume : str
        The checkpoint.h5 resumed from.
    start : int
        Its step.
    out_dir : str
    best : (float, int)
        The checkpoint's best validation loss and its step.

    Returns
    -------
    best : (float, int)
    history : list of dict
        Rows up to the checkpoint's step.
    """
    src = os.path.dirname(os.path.abspath(resume))
    hist_path = os.path.join(out_dir, "history.csv")
    if os.path.exists(hist_path):
        history = read_history(hist_path, upto=start)
    else:
        history = read_history(os.path.join(src, "history.csv"), upto=start)
        write_history(hist_path, history)
    model = os.path.join(out_dir, "model.h5")
    earlier = os.path.join(src, "model.h5")
    if not os.path.exists(model):
        if os.path.exists(earlier) and load_checkpoint(earlier)["step"] == best[1]:
            with atomic_output(model, ".h5") as tmp:
                shutil.copyfile(earlier, tmp)
        else:
            best = (float("inf"), 0)
    return best, history


def fit(store, out_dir, config, xp, resume=None, progress=True, log=print, comm=None):
    """Train a denoiser on a patch store.

    Parameters
    ----------
    store : cupyden.io.store.PatchStore or cupyden.f2fd.F2FdPairs
        The source of pairs: ``size(split)``, ``read("val", indices)`` and
        ``loader(batch_size, xp, seed, start)``.
    out_dir : str
        Receives model.h5 (the best model by validation loss), checkpoint.h5 (the latest
        state, with Adam's moments, for ``--resume``), history.csv, loss_curve.png.
    config : dict
        "model" (a model config), "loss", "lr", "batch_size", "steps", "val_every",
        "val_patches", "seed"; optionally "loss_weights" ({"fourier", "ssim", "gradient"}),
        "fourier_frc", "lr_schedule" and "lr_options" (see ``optim.schedules``), "precision"
        ("fp32", "tf32" or "fp16"; see ``functional.conv.set_precision``), "max_seconds"
        (stop after validating once the training time exceeds it; a cosine schedule then
        ends with the budget, see the module's docstring), "keep" ("best", the default:
        model.h5 holds the weights of the lowest validation loss; "last": those of the last
        validation), "init" (initial
        weights for fine-tuning, :func:`initial_weights`'s ``spec``; ignored when
        resuming), "ema" (a decay in (0, 1): validation and model.h5 use the weights'
        exponential moving average, ``optim.ema``; 0 or absent: the weights), and
        anything else worth keeping (pair source, binning); all of it is
        saved in the checkpoints.
    xp : module
        numpy or cupy.
    resume : str or None
        A checkpoint.h5 to continue from (same config).
    progress : bool
        Show a tqdm progress bar.
    log : callable
    comm : communicator or None
        Data parallel (see the module's docstring): each rank trains on its share of
        every batch and validates its share of the validation patches (the losses are
        reduced over the ranks); with max_seconds the ranks agree to stop at a validation,
        by rank 0's clock, and a cosine's length T is rank 0's estimate. Rank 0 alone
        logs and writes files.

    Returns
    -------
    list of dict
        The history rows.

    Raises
    ------
    RuntimeError
        Data parallel: the ranks' parameters differ at a validation.
    InputError
        Training diverged (a NaN or Inf loss, weight or Adam moment at a validation); the
        last good checkpoint is kept. Also from ``load_checkpoint`` (a ``resume`` holding
        NaN or Inf), a ``resume`` without the weight average that ``config["ema"]`` asks
        for, and ``save_checkpoint`` (a full disk).
    """
    from tqdm import tqdm

    comm = comm or Solo()
    root = comm.rank == 0
    if not root:
        log, progress = (lambda *a: None), False
    dtype = set_precision(config.get("precision", "fp32"), xp)
    model = build_model(config["model"]).to(xp, dtype).train()
    params = Parameters(model)
    opt = Adam(params, lr=config["lr"])
    scaler = LossScaler() if dtype == numpy.float16 else None
    sched = LRSchedule(config.get("lr_schedule", "constant"), config["lr"], config["steps"],
                       **config.get("lr_options", {}))
    objective = build_objective(config, store, xp)
    ema = None                 # the weights' moving average, made once the start is known
    start, best, history = 0, (float("inf"), 0), []
    hist_path = os.path.join(out_dir, "history.csv")
    if config.get("init") and not resume:             # fine-tuning: start from these
        _, init = initial_weights(config["init"])
        model.load_state(init)
        if params.master is not None:                  # float16: keep float32 masters
            params.load_named(params.master, init)
    if resume:
        ck = load_checkpoint(resume)
        model.load_state(ck["weights"])
        if params.master is not None:
            params.load_named(params.master, ck["weights"])
        opt.load_state(ck["adam"])
        if scaler is not None and "loss_scale" in ck["provenance"]:
            scaler.load_state(ck["provenance"]["loss_scale"])
        start = ck["step"]
        best = tuple(ck["provenance"].get("best", best))
        if "schedule" in ck["provenance"]:
            sched.load_state(ck["provenance"]["schedule"])
        if config.get("ema"):
            if ck["average"] is None:
                raise InputError("%s holds no weight average; resume it without --ema, or "
                                 "train again with --ema" % resume)
            ema = WeightAverage(params, config["ema"])
            ema.load_named(ck["average"])
        if root:                               # rank 0 alone writes files
            best, history = _carry_over(resume, start, out_dir, best)
        else:
            history = read_history(hist_path, upto=start)
        log("resumed from %s at step %d" % (resume, start))
        if start >= config["steps"]:
            log("%s is at step %d: the run is complete (--steps %d); nothing to train"
                % (resume, start, config["steps"]))
            if root and not os.path.exists(os.path.join(out_dir, "model.h5")):   # no best model:
                save_checkpoint(os.path.join(out_dir, "model.h5"),
                                dict(ck["weights"], **(ck["average"] or {})), config,
                                start, ck["epoch"], None, ck["rng"], {"best": [None, start]})
    if config.get("ema") and ema is None:              # a_0: the weights the run starts from
        ema = WeightAverage(params, config["ema"])
    if ema is not None:
        log("validation, model.h5 and what it denoises use the exponential moving average "
            "of the weights (decay min(%g, (1 + t) / (10 + t)) at step t)" % config["ema"])
    scored = contextlib.nullcontext if ema is None else ema.swapped   # the validated weights
    B, steps = config["batch_size"], config["steps"]
    max_seconds = config.get("max_seconds")
    keep_last = config.get("keep", "best") == "last"     # model.h5: the last weights
    budgeted = bool(max_seconds) and sched.kind == "cosine"     # T ends with the time
    n_val = min(store.size("val"), config["val_patches"])
    vx, vy = store.read("val", numpy.arange(*share(n_val, comm)))
    vx, vy = xp.asarray(vx), xp.asarray(vy)
    resplit = bool(config.get("resplit"))
    loader = (store.loader(B, xp, seed=config["seed"], start=start, resplit=resplit)
              if comm.size == 1 else
              store.loader(B, xp, seed=config["seed"], start=start, rank=comm.rank,
                           world=comm.size, resplit=resplit))   # (F2Fd's pairs: no shares)
    per_epoch = loader.per_epoch
    if getattr(loader, "resident", 0):
        log("training patches held on the GPU (%.2f GiB): each batch is gathered and "
            "augmented there" % (loader.resident / 2 ** 30))
    t0, running, n_running = time.perf_counter(), 0.0, 0
    t_start = t_last = t0
    elapsed0 = history[-1]["seconds"] if history else 0.0
    bar = tqdm(total=steps, initial=start, unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for step in range(start + 1, steps + 1):
            x, y = next(loader)
            opt.lr = sched.at(step)
            running = running + train_step(model, params, opt, objective, x, y, scaler, comm)
            if ema is not None:
                ema.update(step)
            n_running += 1
            bar.update(1)
            out_of_time = bool(max_seconds) and time.perf_counter() - t0 > max_seconds
            due = step % config["val_every"] == 0 or step == steps
            if comm.size > 1:              # ranks must agree: decide at validations only
                out_of_time = due and bool(comm.values([out_of_time and root], "max")[0])
            if due or out_of_time:
                # losses of the global batch and of all validation patches (one
                # synchronisation); every rank gets the same numbers
                train_loss = float(comm.values([float(running)])[0]) / (n_running * comm.size)
                with scored():
                    local = evaluate(model, objective, vx, vy, B) * len(vx) if len(vx) else 0.0
                val_loss = float(comm.values([local])[0]) / n_val
                if comm.size > 1:
                    check_identical(params, comm, step)
                sched.observe(val_loss)
                now = time.perf_counter()
                rate = n_running * B / (now - t_last)
                if budgeted and t_last > t_start:
                    # the steps the rest of the budget holds at this interval's rate (not
                    # the first interval's, nor since t0: they hold cuDNN's plan tuning);
                    # rank 0's number on every rank (the others give 0), so lr(step) stays
                    # the same
                    left = (max_seconds - (now - t0)) * n_running / (now - t_last)
                    left = comm.values([max(0.0, left) if root else 0.0], "max")[0]
                    sched.fit_budget(step, int(left))
                    bar.total = sched.T
                history.append({"step": step, "train_loss": train_loss, "val_loss": val_loss,
                                "lr": opt.lr, "seconds": elapsed0 + now - t0})
                bar.set_postfix(loss="%.4g" % train_loss, val="%.4g" % val_loss,
                                patches_per_s="%.0f" % rate)
                running, n_running, t_last = 0.0, 0, now
                if root:
                    weights = model.state()
                    if params.master is not None:              # float32 master weights
                        weights.update(params.named(params.master))
                    adam = opt.state()
                    average = ema.named() if ema is not None else None
                _stop_if_diverged(step, train_loss if scaler is None else 0.0, val_loss,
                                  weights if root else None, adam if root else None,
                                  history[:-1], out_dir)
                improved = val_loss < best[0]
                if improved:
                    best = (val_loss, step)
                if root:
                    if improved or keep_last:          # the validated weights
                        save_checkpoint(os.path.join(out_dir, "model.h5"),
                                        dict(weights, **(average or {})), config,
                                        step, step // per_epoch, None, {"seed": config["seed"]},
                                        {"best": list(best)})
                    extra = {"best": list(best), "schedule": sched.state()}
                    if scaler is not None:
                        extra["loss_scale"] = scaler.state()
                    save_checkpoint(os.path.join(out_dir, "checkpoint.h5"), weights, config,
                                    step, step // per_epoch, adam, {"seed": config["seed"]},
                                    extra, average)
                    write_history(hist_path, history)
            if out_of_time:
                log("stopped after %d steps: the %.0f s budget is spent" % (step, max_seconds))
                break
    except BaseException:
        bar.leave = False                   # erase the bar: the error message stands alone
        raise
    finally:
        bar.close()
        loader.close()
        synchronize(xp)
    if history and root:
        report.loss_curve(history, os.path.join(out_dir, "loss_curve.png"),
                          "validation" if ema is None else "validation (weight average)")
    seconds = time.perf_counter() - t0
    done = (history[-1]["step"] - start) if history else 0
    log("best validation loss %.5g%s at step %d; %d steps in %.1f s (%.1f steps/s)"
        % (best[0], "" if ema is None else " (of the weight average)", best[1], done, seconds,
           done / max(seconds, 1e-9)))
    if scaler is not None:
        log("float16: loss scale %g at the end, %d of %d steps skipped (Inf/NaN gradients)"
            % (scaler.scale, scaler.skipped, done))
    return history
