"""The double-buffered patch loader.

Which patches make batch k is a pure function of (seed, k): epoch e = k // batches_per_epoch
uses the permutation ``default_rng([seed, e]).permutation(n)``, and the augmentation of
batch k draws from ``default_rng([seed, e, k])`` (and a new count split of its sample j,
with ``resplit``, from the key ``io.pairs.resplit_keys(seed, e, k, [j])``, drawn on the
device after the copy). So a run resumed at step k sees exactly
the batches an uninterrupted run would, with no generator state to save.

On a GPU, when the training patches fit (``settings.Settings.resident_gib``), they are
copied to the GPU once and a background thread has one kernel (``kernels.augment``) gather
and augment batch k+1 on the copy stream while the model trains on batch k: the host then
draws only which patches and transforms (``io.patches.augment_draw``). Reading 12 patches
of 384 px from the store and augmenting them on the host took 11.6 ms a batch on a
2-core Xeon, holding the GIL that the training thread's kernel launches need. Otherwise
the thread reads every batch from the store:

    host thread:  wait for a free slot s -> read the store into pinned[s] -> augment
                  -> copy stream waits on event freed[s] (the GPU is done with device[s])
                  -> device[s] <- pinned[s] on the copy stream -> (new count split of
                  device[s] on the copy stream) -> record copied[s]
    consumer:     record freed[previous slot] on the compute stream, release that slot
                  -> take the next ready slot -> compute stream waits on copied[s]

Data parallel (``rank``, ``world``): the batch sequence is the one-process run's for the
global batch size; rank r takes the contiguous share [r B / world, (r + 1) B / world) of
each batch, augmented as the one-process run augments those samples.

Two slots, so host memory is two batches whatever the store's size. On the CPU the same
interface is a prefetching generator: a thread reads batch k+1 while batch k trains. Both
sides wait on queues, never in a polling loop, so a loader whose slots are full takes no
CPU time from the training threads (or from another job on the same cores).
(The pattern of PyTorch's DataLoader with pin_memory and a CUDA-stream prefetcher, as in
NVIDIA's Apex ImageNet example, written out.)
"""

import queue
import threading

import numpy

from .. import backend
from ..settings import SETTINGS
from .pairs import resplit, resplit_keys
from .patches import augment, augment_draw


class Loader:
    """Endless batches of patch pairs from a store, from step ``start`` on.

    Parameters
    ----------
    store : cupyden.io.store.PatchStore
    batch_size : int
    xp : module
        numpy or cupy: where the batches are delivered.
    seed : int
    start : int
        The first step (for a resumed run).
    split : str
        "train" or "val".
    do_augment : bool
    slots : int
        Batches in flight (2 = double buffering).
    rank, world : int
        This process's rank and the number of processes of a data-parallel run;
        ``batch_size`` is the global batch, a multiple of ``world``.
    resplit : bool
        Draw a new count split of every sample (``io.pairs.resplit``; the store must hold
        count-split halves, ``PatchStore.count_units``).

    Attributes
    ----------
    resident : int
        Bytes of patches held on the GPU (0: batches are read from the store).

    Yields
    ------
    (x, target) : arrays of ``xp`` (batch_size // world, 1, P, P) (or (..., P, P, P) for
        subvolumes), float32
        Valid until the next batch is taken.
    """

    def __init__(self, store, batch_size, xp, seed=0, start=0, split="train", do_augment=True,
                 slots=2, rank=0, world=1, resplit=False):
        self.store, self.B, self.xp = store, batch_size, xp
        self.units = store.count_units(split) if resplit else None
        if resplit and self.units is None:
            raise ValueError("a new count split per batch needs a store of count-split "
                             "halves that were not binned")
        self.seed, self.step, self.split, self.do_augment = seed, start, split, do_augment
        self.n = store.size(split)
        if self.n < batch_size:
            raise ValueError("%d patches, fewer than one batch of %d" % (self.n, batch_size))
        if batch_size % world:
            raise ValueError("a batch of %d does not split over %d ranks" % (batch_size, world))
        b = batch_size // world
        self.part = slice(rank * b, (rank + 1) * b)       # this rank's share of a batch
        self.per_epoch = self.n // batch_size
        shape = (b,) + store.sample_shape              # (b, 1, P, P) or (b, 1, P, P, P)
        gpu = xp is not numpy
        alloc = backend.pinned_empty if gpu else numpy.empty
        self.host = [(alloc(shape, numpy.float32), alloc(shape, numpy.float32))
                     for _ in range(slots)]
        if gpu:
            self.device = [(xp.empty(shape, numpy.float32), xp.empty(shape, numpy.float32))
                           for _ in range(slots)]
            self.device_units = [(xp.empty(b), xp.empty(b), xp.empty(b, numpy.uint64))
                                 for _ in range(slots)]       # resplit's loc, scale, keys
            self.copy_stream = backend.new_stream()
            self.copied = [backend.new_event() for _ in range(slots)]
            self.freed = [backend.new_event() for _ in range(slots)]
            self.device_id = xp.cuda.Device().id
        self.resident = 0
        nbytes = 2 * self.n * int(numpy.prod(store.sample_shape)) * 4
        if gpu and len(shape) == 4 and nbytes <= SETTINGS.resident_gib * 2 ** 30 \
                and nbytes <= backend.free_device_bytes() // 2:
            self.all = (xp.empty((self.n,) + store.sample_shape, numpy.float32),
                        xp.empty((self.n,) + store.sample_shape, numpy.float32))
            for i in range(0, self.n, 64):        # once, 64 patches at a time
                hx, hy = store.read(split, numpy.arange(i, min(i + 64, self.n)))
                self.all[0][i:i + len(hx)].set(hx)
                self.all[1][i:i + len(hy)].set(hy)
            backend.synchronize(xp)               # before the copy stream reads them
            self.meta = [backend.pinned_empty((3 * b,), numpy.int64) for _ in range(slots)]
            self.device_meta = [xp.empty(3 * b, numpy.int64) for _ in range(slots)]
            self.resident = nbytes
        self.free = queue.Queue()
        for s in range(slots):
            self.free.put(s)
        self.ready = queue.Queue()
        self.current = None
        self._stop = False
        self.thread = threading.Thread(target=self._produce, daemon=True)
        self.thread.start()

    def indices(self, step):
        """Store indices of this rank's share of batch ``step`` (pure function of seed and
        step)."""
        epoch, k = divmod(step, self.per_epoch)
        perm = numpy.random.default_rng([self.seed, epoch]).permutation(self.n)
        return perm[k * self.B:(k + 1) * self.B][self.part]

    def _produce(self):
        try:
            if self.xp is not numpy:
                backend.cupy.cuda.Device(self.device_id).use()
                from ..kernels.augment import gather_augment
            step = self.step
            while not self._stop:
                s = self.free.get()
                if s is None:
                    return
                hx, hy = self.host[s]
                if self.xp is not numpy:
                    self.copied[s].synchronize()      # the last copy out of pinned[s] is done
                idx = self.indices(step)
                epoch, k = divmod(step, self.per_epoch)
                if self.resident:                # which patches and transforms, no pixels
                    meta = self.meta[s].reshape(3, -1)
                    meta[0] = idx
                    meta[1:] = 0
                    if self.do_augment:
                        meta[1], meta[2] = augment_draw(
                            numpy.random.default_rng([self.seed, epoch, k]), self.B, False,
                            self.part)
                else:
                    self.store.read(self.split, idx, hx, hy)
                    if self.do_augment:
                        augment(hx, hy, numpy.random.default_rng([self.seed, epoch, k]),
                                self.B, self.part)
                units = None
                if self.units is not None:       # (loc, scale, keys) of this rank's samples,
                    units = (self.units[0][idx], self.units[1][idx],    # keyed as in the
                             resplit_keys(self.seed, epoch, k, range(   # one-process batch
                                 self.part.start, self.part.start + len(idx))))
                if self.xp is numpy:
                    if units is not None:
                        resplit(hx, hy, *units)
                else:
                    dx, dy = self.device[s]
                    self.copy_stream.wait_event(self.freed[s])
                    if self.resident:
                        self.device_meta[s].set(self.meta[s], stream=self.copy_stream)
                        with self.copy_stream:
                            gather_augment(*self.all, self.device_meta[s], dx, dy)
                    else:
                        dx.set(hx, stream=self.copy_stream)
                        dy.set(hy, stream=self.copy_stream)
                    if units is not None:
                        for d, h in zip(self.device_units[s], units):
                            d.set(h, stream=self.copy_stream)
                        with self.copy_stream:
                            resplit(dx, dy, *self.device_units[s])
                    self.copied[s].record(self.copy_stream)
                self.ready.put(s)
                step += 1
        except BaseException as exc:           # surface reader errors in the consumer
            self.ready.put(exc)

    def __iter__(self):
        return self

    def __next__(self):
        if self.current is not None:
            if self.xp is not numpy:
                self.freed[self.current].record(backend.current_stream())
            self.free.put(self.current)
        s = self.ready.get()
        if isinstance(s, BaseException):
            raise s
        self.current = s
        self.step += 1
        if self.xp is numpy:
            return self.host[s]
        backend.current_stream().wait_event(self.copied[s])
        return self.device[s]

    def close(self):
        """Stop the background thread."""
        self._stop = True
        self.free.put(None)
        self.thread.join(timeout=5)
