"""Many micrographs on several GPUs and machines through Dask (an extra: ``cupyden[dask]``).

The client plans the jobs (:func:`cupyden.pipeline.denoise.plan_jobs`: clashes refused,
finished outputs skipped), splits them into chunks and sends each chunk to a Dask worker,
which runs the streaming pipeline (:func:`cupyden.pipeline.denoise.run_jobs`) on it. A
worker loads the model once and keeps it, with its cuDNN plans, between chunks.

Three ways to get workers:

- ``client=``: a ``distributed.Client`` the caller keeps (a notebook, a pipeline that
  denoises batch after batch): its workers keep their models and cuDNN plans between
  calls, and the call neither starts nor closes a cluster;
- ``gpus=[0, 1]``: a ``dask_cuda.LocalCUDACluster`` on this machine, one worker process per
  GPU (inside a worker its GPU is device 0: dask-cuda rotates ``CUDA_VISIBLE_DEVICES``);
- ``scheduler="tcp://host:8786"``: a running cluster, e.g. ``dask scheduler`` on one node
  and ``dask cuda worker tcp://host:8786`` on each GPU node (or dask-jobqueue on SLURM).
  The output folder must be on a file system every worker reaches.

Identical outputs on every worker. cuDNN may choose a different plan (another algorithm,
other rounding) for the same convolution in two processes, after timing its candidates.
The first micrograph is therefore denoised alone on one worker, which tunes the plans and
records its choices in the persistent plan cache (``cupyden.kernels.plan_cache``); the
other workers then build the recorded plans instead of timing their own, so every worker
runs the same kernels and a file's output does not depend on the worker that denoised it
(for workers with the same GPU model, cuDNN and frontend versions, and a cache folder
they share; on one machine they share the user's cache folder).

Pitfalls (dask-cuda's documentation): a script that starts a local cluster needs the
``if __name__ == "__main__":`` guard (workers are spawned and import the main module),
and the parent must not touch CUDA before the cluster starts: this module creates no
CUDA context in the client.
"""

import math
import time

from ..errors import InputError
from ..io.atomic import output_folder
from .denoise import (STAGES, Settings, check_tta, default_log, finish_batch, load_model,
                      plan_jobs, run_jobs)

#: Chunks per worker: small enough to balance the load, few enough that the pipeline's
#: fill and drain at each chunk's start and end (reading the first file, writing the
#: last ones: about 0.25 s for 4096^2 micrographs) stay small beside the work. With 4,
#: two warm H200 workers reached 1.78x one worker's throughput on 100 micrographs
#: (Topaz's unet; benchmarks/RESULTS.md, session 8).
CHUNKS_PER_WORKER = 2

#: Models loaded in this worker process, by (path, device, precision).
_MODELS = {}


def _worker_model(path, device, precision):
    key = (path, device, precision)
    if key not in _MODELS:
        _MODELS[key] = load_model(path, device, precision)
    return _MODELS[key]


def run_chunk(model_path, device, precision, jobs, settings):
    """Dask task: denoise ``jobs`` with this worker's copy of the model.

    Returns
    -------
    written : list of Job
    failed : list of (str, str)
    times : dict
    """
    model = _worker_model(model_path, device, precision)
    return run_jobs(model, jobs, settings, log=lambda line: None)


def _model_bin(path):
    """The model's binning factor, read on the host (no CUDA in the client)."""
    if path.startswith("topaz:"):
        return 1
    from ..io.checkpoint import load_checkpoint
    return int(load_checkpoint(path)["config"].get("bin", 1))


def connect(gpus=None, scheduler=None):
    """A Dask client on local GPUs or on a running scheduler.

    Parameters
    ----------
    gpus : list of int or None
        GPUs of this machine: a ``dask_cuda.LocalCUDACluster``, one worker process each.
    scheduler : str or None
        Address of a running scheduler (used when ``gpus`` is None).

    Returns
    -------
    client : distributed.Client
    cluster : dask_cuda.LocalCUDACluster or None
        Close it after the client (None for a scheduler).

    Raises
    ------
    InputError
        Dask or dask-cuda missing; a GPU that cannot be used; an unreachable scheduler.
    """
    try:
        from distributed import Client
    except ImportError:
        raise InputError("--gpus and --scheduler need Dask; install 'cupyden[dask]' "
                         "(dask, distributed, dask-cuda)")
    if gpus is None:
        if not scheduler:
            raise InputError("Dask workers need GPUs (--gpus) or a scheduler (--scheduler)")
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError) as exc:
            raise InputError("cannot reach the Dask scheduler at %s (%s)" % (scheduler, exc))
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise InputError("--gpus needs dask-cuda; install 'cupyden[dask]' on the GPU machine")
    from .. import backend
    n = backend.gpu_count()
    bad = [g for g in gpus if not 0 <= g < n]
    if bad:
        raise InputError("--gpus %s: GPU %s cannot be used (%s)" % (
            ",".join(map(str, gpus)), bad[0], backend.why_no_gpu()))
    cluster = LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)))
    return Client(cluster), cluster


def denoise_files_dask(model, inputs, output_dir, gpus=None, scheduler=None, client=None,
                       device=None, precision="auto", suffix="", bin=None, tile=None,
                       batch_size=4, samples=4, passes=4, float16=False, fmt="mrc",
                       only_unfinished=False, star_columns=("rlnMicrographName",),
                       progress=False, log=None, tta=1):
    """:func:`cupyden.pipeline.denoise_files` on Dask workers (module docstring).

    Parameters
    ----------
    model : str
        Model file or ``topaz:NAME`` (each worker loads it; :func:`load_model`).
    inputs, output_dir
        As in :func:`cupyden.pipeline.denoise_files`.
    gpus : list of int or None
        GPUs of this machine for a local cluster, one worker each.
    scheduler : str or None
        Address of a running Dask scheduler (instead of ``gpus``).
    client : distributed.Client or None
        Workers to use (instead of ``gpus`` and ``scheduler``); left open.
    device : None, int or str
        Each worker's device with ``scheduler`` or ``client`` (None: the worker's
        ``CUPYDEN_DEVICE``, else auto); ignored with ``gpus`` (each worker's own GPU).
    precision : str
        As in :func:`load_model`.
    suffix, bin, tile, batch_size, samples, passes, float16, fmt, only_unfinished,
    star_columns, progress, log, tta
        As in :func:`cupyden.pipeline.denoise_files`.

    Returns
    -------
    BatchResult
        ``times`` summed over workers.

    Raises
    ------
    InputError
        As :func:`cupyden.pipeline.denoise_files` (a ``tta`` the model cannot take: from
        the first worker); Dask or dask-cuda missing; a GPU that cannot be used; an
        unreachable scheduler.
    """
    t_start = time.perf_counter()
    check_tta(None, tta)                        # the model's own refusal comes from a worker
    jobs, skipped, stars = plan_jobs(inputs, output_dir, suffix, fmt, only_unfinished,
                                     star_columns)
    output_folder(output_dir)
    settings = Settings(_model_bin(model) if bin is None else int(bin), tile, int(batch_size),
                        int(samples), int(passes), bool(float16), fmt, int(tta))
    if gpus is not None:
        device = 0                              # each worker sees its own GPU as device 0
    own = client is None
    if own:
        client, cluster = connect(gpus, scheduler)
    written, failed, times = [], [], dict.fromkeys(STAGES, 0.0)
    bar = None
    if progress:
        import sys
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), unit="micrograph", file=sys.stderr)
    try:
        from distributed import as_completed
        if own:
            client.wait_for_workers(len(gpus) if gpus else 1)
        workers = max(1, len(client.scheduler_info()["workers"]))
        size = max(1, math.ceil((len(jobs) - 1) / (workers * CHUNKS_PER_WORKER)))
        chunks = [jobs[:1]] + [jobs[i:i + size] for i in range(1, len(jobs), size)]
        futures = []
        for k, chunk in enumerate(chunks):
            if not chunk:
                continue
            futures.append(client.submit(run_chunk, model, device, precision, chunk, settings,
                                         pure=False))
            if k == 0:                          # tune on one micrograph first (docstring)
                futures[0].result()
        for future in as_completed(futures):
            w, f, t = future.result()
            written += w
            failed += f
            for k, v in t.items():
                times[k] += v
            for source, reason in f:
                (log or default_log)("error: %s" % reason)
            if bar is not None:
                bar.update(len(w) + len(f))
    finally:
        if bar is not None:
            bar.close()
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    return finish_batch(jobs, written, skipped, failed, times, stars, output_dir, settings,
                        star_columns, time.perf_counter() - t_start)
