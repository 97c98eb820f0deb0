"""The training loop: one place, readable top to bottom.

One step is: model.forward -> loss.forward -> loss.backward -> model.backward -> Adam.
``fit`` adds what a run needs around it: the loader, validation every N steps, the best
model kept, a checkpoint to resume from, history.csv and the loss curve.
"""

import csv
import os
import shutil
import time

import numpy

from . import report
from .backend import synchronize
from .functional.conv import set_precision
from .io.atomic import atomic_output
from .errors import InputError
from .io.checkpoint import load_checkpoint, non_finite, save_checkpoint
from .losses import Objective
from .losses.fourier import frc_ring_weights
from .models import build_model
from .optim import Adam, Parameters
from .optim.loss_scale import LossScaler
from .optim.schedules import LRSchedule

HISTORY_FIELDS = ("step", "train_loss", "val_loss", "lr", "seconds")


def as_objective(loss):
    """An :class:`~cupyden.losses.Objective` from a loss name ("mse") or an Objective."""
    return loss if isinstance(loss, Objective) else Objective([(loss, 1.0)])


def train_step(model, params, optimizer, loss, x, target, scaler=None):
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

    Returns
    -------
    0-d array
        The loss before the update (on the device; no synchronisation without a scaler).
    """
    objective = as_objective(loss)
    y = model.forward(x.astype(model.dtype, copy=False))
    value, cache = objective.forward(y.astype(target.dtype, copy=False), target)
    params.zero_grad()
    dy = objective.backward(cache)
    if scaler is None:
        model.backward(dy.astype(model.dtype, copy=False))
        optimizer.step()
        return value
    model.backward((dy * scaler.scale).astype(model.dtype))
    finite = scaler.finite(params.grad)
    if finite:
        optimizer.step(grad_scale=scaler.scale)
    scaler.update(finite)
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
    weights, adam : dicts of host arrays
        ``Model.state()`` and ``Adam.state()``.
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
    else:
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


def fit(store, out_dir, config, xp, resume=None, progress=True, log=print):
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
        ("fp32", "tf32" or "fp16"; see ``functional.conv.set_precision``), "max_seconds" (stop after validating once the
        training time exceeds it), and anything else worth keeping (pair source,
        binning); all of it is saved in the checkpoints.
    xp : module
        numpy or cupy.
    resume : str or None
        A checkpoint.h5 to continue from (same config).
    progress : bool
        Show a tqdm progress bar.
    log : callable

    Returns
    -------
    list of dict
        The history rows.

    Raises
    ------
    InputError
        Training diverged (a NaN or Inf loss, weight or Adam moment at a validation); the
        last good checkpoint is kept. Also from ``load_checkpoint`` (a ``resume`` holding
        NaN or Inf) and ``save_checkpoint`` (a full disk).
    """
    from tqdm import tqdm

    dtype = set_precision(config.get("precision", "fp32"), xp)
    model = build_model(config["model"]).to(xp, dtype).train()
    params = Parameters(model)
    opt = Adam(params, lr=config["lr"])
    scaler = LossScaler() if dtype == numpy.float16 else None
    sched = LRSchedule(config.get("lr_schedule", "constant"), config["lr"], config["steps"],
                       **config.get("lr_options", {}))
    objective = build_objective(config, store, xp)
    start, best, history = 0, (float("inf"), 0), []
    hist_path = os.path.join(out_dir, "history.csv")
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
        best, history = _carry_over(resume, start, out_dir, best)
        log("resumed from %s at step %d" % (resume, start))
        if start >= config["steps"]:
            log("%s is at step %d: the run is complete (--steps %d); nothing to train"
                % (resume, start, config["steps"]))
            if not os.path.exists(os.path.join(out_dir, "model.h5")):   # no best model known:
                save_checkpoint(os.path.join(out_dir, "model.h5"), ck["weights"], config,
                                start, ck["epoch"], None, ck["rng"], {"best": [None, start]})
    B, steps = config["batch_size"], config["steps"]
    max_seconds = config.get("max_seconds")
    n_val = min(store.size("val"), config["val_patches"])
    vx, vy = store.read("val", numpy.arange(n_val))
    vx, vy = xp.asarray(vx), xp.asarray(vy)
    loader = store.loader(B, xp, seed=config["seed"], start=start)
    per_epoch = loader.per_epoch
    t0, t_last, running, n_running = time.perf_counter(), time.perf_counter(), 0.0, 0
    elapsed0 = history[-1]["seconds"] if history else 0.0
    bar = tqdm(total=steps, initial=start, unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for step in range(start + 1, steps + 1):
            x, y = next(loader)
            opt.lr = sched.at(step)
            running = running + train_step(model, params, opt, objective, x, y, scaler)
            n_running += 1
            bar.update(1)
            out_of_time = max_seconds and time.perf_counter() - t0 > max_seconds
            if step % config["val_every"] == 0 or step == steps or out_of_time:
                train_loss = float(running) / n_running        # one synchronisation
                val_loss = evaluate(model, objective, vx, vy, B)
                sched.observe(val_loss)
                now = time.perf_counter()
                rate = n_running * B / (now - t_last)
                history.append({"step": step, "train_loss": train_loss, "val_loss": val_loss,
                                "lr": opt.lr, "seconds": elapsed0 + now - t0})
                bar.set_postfix(loss="%.4g" % train_loss, val="%.4g" % val_loss,
                                patches_per_s="%.0f" % rate)
                running, n_running, t_last = 0.0, 0, now
                weights = model.state()
                if params.master is not None:                  # float32 master weights
                    weights.update(params.named(params.master))
                adam = opt.state()
                _stop_if_diverged(step, train_loss if scaler is None else 0.0, val_loss,
                                  weights, adam, history[:-1], out_dir)
                if val_loss < best[0]:
                    best = (val_loss, step)
                    save_checkpoint(os.path.join(out_dir, "model.h5"), weights, config,
                                    step, step // per_epoch, None, {"seed": config["seed"]},
                                    {"best": list(best)})
                extra = {"best": list(best), "schedule": sched.state()}
                if scaler is not None:
                    extra["loss_scale"] = scaler.state()
                save_checkpoint(os.path.join(out_dir, "checkpoint.h5"), weights, config,
                                step, step // per_epoch, adam, {"seed": config["seed"]}, extra)
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
    if history:
        report.loss_curve(history, os.path.join(out_dir, "loss_curve.png"))
    seconds = time.perf_counter() - t0
    done = (history[-1]["step"] - start) if history else 0
    log("best validation loss %.5g at step %d; %d steps in %.1f s (%.1f steps/s)"
        % (best[0], best[1], done, seconds, done / max(seconds, 1e-9)))
    if scaler is not None:
        log("float16: loss scale %g at the end, %d of %d steps skipped (Inf/NaN gradients)"
            % (scaler.scale, scaler.skipped, done))
    return history
