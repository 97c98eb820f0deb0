"""Data-parallel training over several GPUs: one process per GPU, NCCL through CuPy.

What each rank does is in ``cupyden.training`` (``fit(..., comm=...)``): it reads its share of
every global batch from the patch store (the one-GPU run's batch sequence for the same
seed and global batch), sums the flat gradient buffer over the ranks with one NCCL
all-reduce per step, and Adam divides by the number of ranks; rank 0 alone writes
checkpoints and history. This module starts the ranks and connects them.

One host (``cupyden-train --gpus 0,1``): the launcher (the command's process) builds the
store on the first GPU, draws the NCCL unique id, starts one process per GPU with the
"spawn" start method (CUDA does not survive ``fork``) and hands each the id and its rank;
it then watches them: when a rank exits with an error the others are stopped (they would
wait in NCCL for ever) and the run ends with a message naming the rank. (Verified on two
H200s: ``../shared/docs/SCALE_OUT.md``; ``cupyx.distributed``'s TCP store did not work
there, hence the id handed over by the launcher.)

Several nodes: every rank is started by the cluster's launcher, e.g. under SLURM with one
task per GPU::

    srun --nodes 2 --ntasks-per-node 4 --gpus-per-task 1 --kill-on-bad-exit=1 \\
        cupyden-train --rendezvous /shared/run7.$SLURM_JOB_ID.nccl -o /shared/run7 'mics/*.mrc'

``--rendezvous PATH`` names a file on a file system every node sees: rank 0 builds the
store (in the shared output folder), draws the NCCL id and writes it to PATH atomically
(temporary file + rename); the other ranks wait for PATH, read the id and open the store.
PATH must not exist when the run starts (name it per run, as above); rank 0 removes it at
the end. Rank and world size come from ``--rank``/``--world-size``, else SLURM_PROCID and
SLURM_NTASKS; the GPU from ``-d``, else SLURM_LOCALID (modulo the GPUs the task sees).
``--kill-on-bad-exit=1`` makes srun end every task when one fails.

Every rank has a watchdog: when it has made no training progress for ``--nccl-timeout``
seconds (a peer died or hangs, so NCCL waits for ever) it says so and exits with status 3.

``NCCL_NVLS_ENABLE=0`` (NVLink multicast off) is set in every process unless the
environment sets it (SCALE_OUT.md).
"""

import json
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
import time
from typing import NamedTuple

import numpy

from . import backend
from .errors import InputError
from .io.atomic import atomic_output
from .io.store import PatchStore
from .training import fit, read_history

_ENV = {"NCCL_NVLS_ENABLE": "0"}


class Plan(NamedTuple):
    """Where this process stands in a run.

    rank, world : int
        This process's rank (0 for the launcher) and the number of ranks.
    device : str or int or None
        The device of this process (``backend.select_device``'s spec).
    gpus : list of int or None
        One host: the GPU of each rank, started by :func:`launch`.
    rendezvous : str or None
        Several nodes: the file through which rank 0 hands out the NCCL id.
    """
    rank: int
    world: int
    device: object
    gpus: object
    rendezvous: object

    @property
    def launch(self):
        """True in the process that starts the ranks (one host, several GPUs)."""
        return bool(self.gpus) and self.world > 1

    def describe(self):
        """A few words for the log."""
        if self.launch:
            return "; data parallel over GPUs %s" % ",".join(map(str, self.gpus))
        if self.rendezvous:
            return "; rank %d of %d (rendezvous %s)" % (self.rank, self.world, self.rendezvous)
        return ""

    def check_batch(self, batch_size, given=True):
        """The run's global batch, which must split evenly over the ranks (checked once the
        run's options, its recipe's included, are known).

        Parameters
        ----------
        batch_size : int
        given : bool
            The user gave it (``--batch-size``). A batch from a recipe is rounded up to the
            next multiple of the ranks instead of refused (the K2 recipe's 12 over 8 GPUs:
            16).

        Returns
        -------
        batch_size : int
        note : str or None
            For the log, when the batch was rounded up.

        Raises
        ------
        InputError
            A given batch that does not split.
        """
        if batch_size % self.world == 0:
            return batch_size, None
        if given:
            raise InputError("--batch-size %d does not split over %d GPUs; use a multiple "
                             "of %d" % (batch_size, self.world, self.world))
        rounded = -(-batch_size // self.world) * self.world
        return rounded, ("--batch-size %d: the recipe's %d rounded up to split over %d GPUs"
                         % (rounded, batch_size, self.world))


def plan(gpus=None, rendezvous=None, rank=None, world_size=None, device=None):
    """The run's ranks from the options of ``cupyden-train``.

    Parameters
    ----------
    gpus : list of int or None
        GPUs of this host, one rank each.
    rendezvous : str or None
        File for the NCCL id of a multi-node run.
    rank, world_size : int or None
        This process's rank and the number of ranks (rendezvous); None reads SLURM_PROCID
        and SLURM_NTASKS.
    device : str or int or None
        -d; for a rendezvous rank None reads SLURM_LOCALID.

    Returns
    -------
    Plan

    Raises
    ------
    InputError
        Both ``gpus`` and ``rendezvous``; a repeated GPU; a missing rank or world size; a
        rank out of range; an existing rendezvous file. (The batch: :meth:`Plan.check_batch`.)
    """
    if gpus and rendezvous:
        raise InputError("--gpus (one host) and --rendezvous (several nodes) exclude each "
                         "other")
    if gpus:
        gpus = [int(g) for g in gpus]
        if len(set(gpus)) != len(gpus) or min(gpus) < 0:
            raise InputError("--gpus must list distinct GPU numbers, got %s"
                             % ",".join(map(str, gpus)))
        return Plan(0, len(gpus), str(gpus[0]), gpus, None)
    if not rendezvous:
        return Plan(0, 1, device, None, None)
    rank = _from_env(rank, "SLURM_PROCID", "--rank")
    world = _from_env(world_size, "SLURM_NTASKS", "--world-size")
    if not 0 <= rank < world:
        raise InputError("--rank %d is not in [0, --world-size %d)" % (rank, world))
    if device is None:
        local = int(os.environ.get("SLURM_LOCALID", "0"))
        device = str(local % max(1, backend.gpu_count()))
    if rank == 0 and os.path.exists(rendezvous):
        raise InputError("%s exists (from an earlier run?); remove it or name a new file "
                         "per run, e.g. run.$SLURM_JOB_ID.nccl" % rendezvous)
    return Plan(rank, world, device, None, rendezvous)


def _from_env(value, variable, option):
    if value is None:
        if variable not in os.environ:
            raise InputError("--rendezvous needs %s (or %s, as SLURM sets it)" % (option, variable))
        value = os.environ[variable]
    try:
        return int(value)
    except ValueError:
        raise InputError("%s must be an integer, got %r" % (option, value))


def rendezvous(p, store_path):
    """The NCCL unique id of the run (after the store exists), or None for one process.

    The launcher draws it; with a rendezvous file rank 0 draws it and writes it there and
    the other ranks wait for it.

    Returns
    -------
    tuple or None
    """
    if p.world == 1:
        return None
    os.environ.update({k: v for k, v in _ENV.items() if k not in os.environ})
    nccl = backend.nccl_module()
    if p.launch:
        return nccl.get_unique_id()
    if p.rank == 0:
        uid = nccl.get_unique_id()
        with atomic_output(p.rendezvous, ".nccl") as tmp, open(tmp, "w") as f:
            json.dump({"uid": list(uid), "world": p.world, "store": store_path}, f)
        return uid
    print("rank %d: waiting for rank 0's store and NCCL id in %s" % (p.rank, p.rendezvous),
          file=sys.stderr, flush=True)
    while not os.path.exists(p.rendezvous):
        time.sleep(0.5)
    with open(p.rendezvous) as f:
        data = json.load(f)
    if data["world"] != p.world:
        raise InputError("%s is for %d ranks, this run has %d: a file of another run?"
                         % (p.rendezvous, data["world"], p.world))
    return tuple(data["uid"])


def finish(p):
    """Rank 0 of a rendezvous run removes the rendezvous file (every rank has read it)."""
    if p.rendezvous and p.rank == 0 and os.path.exists(p.rendezvous):
        os.remove(p.rendezvous)


class NcclComm:
    """A rank's NCCL communicator with a watchdog, the interface ``fit`` uses.

    Parameters
    ----------
    world : int
    uid : tuple
        ``cupy.cuda.nccl.get_unique_id()`` of the run (the same on every rank).
    rank : int
    timeout : float
        Seconds without an all-reduce after which the process reports and exits (3).

    Attributes
    ----------
    rank, size : int
    """

    def __init__(self, world, uid, rank, timeout=600.0):
        self.rank, self.size, self.timeout = rank, world, float(timeout)
        self._nccl = backend.nccl_module()
        self._codes = {numpy.dtype(numpy.float16): self._nccl.NCCL_FLOAT16,
                       numpy.dtype(numpy.float32): self._nccl.NCCL_FLOAT32,
                       numpy.dtype(numpy.float64): self._nccl.NCCL_FLOAT64}
        self._ops = {"sum": self._nccl.NCCL_SUM, "max": self._nccl.NCCL_MAX}
        self.beat = time.monotonic()
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()   # also guards the join
        self.comm = self._nccl.NcclCommunicator(world, uid, rank)
        self.beat = time.monotonic()

    def allreduce_(self, a, op="sum"):
        """Reduce a device array over the ranks, in place, on the current stream."""
        self.comm.allReduce(a.data.ptr, a.data.ptr, a.size, self._codes[a.dtype],
                            self._ops[op], backend.current_stream().ptr)
        self.beat = time.monotonic()
        return a

    def values(self, v, op="sum"):
        """Host numbers reduced over the ranks (float64 array; synchronises)."""
        a = backend.gpu_module().asarray(v, numpy.float64)
        return backend.to_host(self.allreduce_(a, op))

    def _watch(self):
        while not self._done.wait(min(10.0, self.timeout / 4)):
            idle = time.monotonic() - self.beat
            if idle > self.timeout:
                print("cupyden-train: rank %d: no training progress for %.0f s (a rank died or "
                      "hangs; see --nccl-timeout); exiting" % (self.rank, idle),
                      file=sys.stderr, flush=True)
                os._exit(3)

    def close(self, failed=False):
        """Free the communicator (abort it after a failure: peers may be waiting in a
        collective, and destroying would wait for them), then stop the watchdog."""
        if failed:
            self.comm.abort()
        else:
            self.comm.destroy()
        self._done.set()


def _quiet(*args):
    pass


def run_rank(rank, world, uid, device, store_path, out_dir, config, resume=None,
             progress=True, timeout=600.0, log=print):
    """Train as one rank of a data-parallel run (in this process).

    Parameters
    ----------
    rank, world : int
    uid : tuple
        The run's NCCL unique id.
    device : str or int
        This rank's GPU.
    store_path, out_dir : str
        The patch store; the output folder (rank 0 writes there).
    config : dict
        ``fit``'s config (``batch_size`` is the global batch).
    resume : str or None
    progress : bool
        Rank 0's progress bar.
    timeout : float
        The watchdog's limit, seconds.
    log : callable
        Rank 0's log.

    Returns
    -------
    list of dict
        The history rows (the same on every rank).
    """
    os.environ.update({k: v for k, v in _ENV.items() if k not in os.environ})
    dev = backend.select_device(str(device))
    if not dev.is_gpu:
        raise InputError("data-parallel training runs on GPUs; rank %d got device %s"
                         % (rank, device))
    comm = NcclComm(world, uid, rank, timeout)
    store = PatchStore(store_path)
    try:
        history = fit(store, out_dir, config, dev.xp, resume=resume,
                      progress=progress and rank == 0, log=log if rank == 0 else _quiet,
                      comm=comm)
    except BaseException:
        comm.close(failed=True)
        raise
    finally:
        store.close()
    comm.close()
    return history


def _worker(rank, world, uid, device, store_path, out_dir, config, resume, progress, timeout):
    """Entry point of a spawned rank: InputError -> one line and exit status 2."""
    try:
        run_rank(rank, world, uid, device, store_path, out_dir, config, resume, progress,
                 timeout, print if rank == 0 else _quiet)
    except InputError as exc:
        print("cupyden-train: rank %d: error: %s" % (rank, " ".join(str(exc).split())),
              file=sys.stderr, flush=True)
        sys.exit(2)


def launch(p, uid, store_path, out_dir, config, resume=None, progress=True, timeout=600.0,
           log=print):
    """Start one spawned process per GPU of ``p.gpus``, wait for them, stop all when one
    fails.

    Returns
    -------
    list of dict
        The history (read from out_dir/history.csv, written by rank 0).

    Raises
    ------
    InputError
        A rank exited with an error (the others were stopped); the message names it and
        the checkpoint to resume from.
    """
    os.environ.update({k: v for k, v in _ENV.items() if k not in os.environ})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, name="cupyden-rank%d" % r,
                         args=(r, p.world, uid, gpu, store_path, out_dir, config, resume,
                               progress, timeout))
             for r, gpu in enumerate(p.gpus)]
    try:
        for proc in procs:
            proc.start()
    except BaseException:
        _stop(procs)
        raise
    supervise(procs, p.gpus, os.path.join(out_dir, "checkpoint.h5"))
    return read_history(os.path.join(out_dir, "history.csv"))


def supervise(procs, gpus, checkpoint):
    """Wait for the started rank processes; when one exits with an error, stop the others
    (they would wait in NCCL for ever) and say which one failed.

    Parameters
    ----------
    procs : list of multiprocessing.Process
        Rank r is ``procs[r]``, started.
    gpus : list of int
        The GPU of each rank (for the message).
    checkpoint : str
        The run's checkpoint.h5, named in the message when it exists.

    Raises
    ------
    InputError
        A rank exited with a non-zero status (the others are stopped first).
    """
    running = {proc.sentinel: (r, proc) for r, proc in enumerate(procs)}
    try:
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                r, proc = running.pop(sentinel)
                proc.join()
                if proc.exitcode != 0:
                    _stop(procs)
                    raise InputError(
                        "rank %d (GPU %d) ended with exit status %s; the other ranks were "
                        "stopped%s" % (r, gpus[r], proc.exitcode,
                                       "; resume with --resume %s" % checkpoint
                                       if os.path.exists(checkpoint) else ""))
    except BaseException:
        _stop(procs)
        raise


def _stop(procs, grace=10.0):
    """Terminate the ranks still running (SIGTERM, then SIGKILL after ``grace`` s)."""
    procs = [proc for proc in procs if proc.pid is not None]      # started ones
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
