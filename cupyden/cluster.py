"""Clustering particle images with a Siamese network and k-means, over rounds.

Round 0: k-means on the principal components of the normalised images. Each later round:
sample pairs of images from the same cluster (y = 0) and from different clusters (y = 1),
train the Siamese embedding on them with the contrastive loss, embed every image, run
k-means on the embeddings, relabel. Averaging each class gives a denoised view of it.

Metrics against known labels (simulations): purity (the share of images whose cluster's
majority class is their own class) and normalised mutual information
NMI = I(U; V) / sqrt(H(U) H(V)) (Strehl & Ghosh 2002).
"""

import numpy
import scipy.cluster.vq

from .backend import get_array_module, to_device, to_host
from .losses.contrastive import contrastive_backward, contrastive_forward
from .models import Siamese
from .optim import Adam, Parameters


def normalize_images(images):
    """Each image to zero mean and unit standard deviation; (N, H, W) float32."""
    x = numpy.asarray(images, numpy.float64)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    return (x / (x.std(axis=(1, 2), keepdims=True) + 1e-12)).astype(numpy.float32)


def principal_components(x, n):
    """The first n principal-component scores of the rows of x (N, D), by SVD."""
    x = x - x.mean(axis=0)
    u, s, _ = numpy.linalg.svd(x, full_matrices=False)
    return (u[:, :n] * s[:n]).astype(numpy.float32)


def kmeans(x, k, seed=0, restarts=10, iters=50):
    """k-means labels of the rows of x (N, D): the best of ``restarts`` runs (lowest sum
    of squared distances to the centroids).

    NumPy: ``scipy.cluster.vq.kmeans2`` with k-means++ seeding. CuPy: k-means++ seeding on
    the host, then Lloyd's iterations on the GPU (squared distances
    |x|^2 - 2 x c^T + |c|^2, argmin, centroids as one-hot means).

    Returns
    -------
    int numpy array (N,)
    """
    xp = get_array_module(x)
    host = to_host(x).astype(numpy.float64)
    best, best_cost = None, numpy.inf
    for r in range(restarts):
        if xp is numpy:
            _, labels = scipy.cluster.vq.kmeans2(host, k, minit="++", seed=seed + r)
        else:
            labels = _lloyd_gpu(x.astype(numpy.float64), k, xp, seed + r, iters, host)
        cost = sum(((host[labels == c] - host[labels == c].mean(0)) ** 2).sum()
                   for c in numpy.unique(labels))
        if cost < best_cost:
            best, best_cost = labels, cost
    return best


def _lloyd_gpu(xd, k, xp, seed, iters, host):
    """Lloyd's iterations on the GPU from a host k-means++ seeding."""
    _, labels = scipy.cluster.vq.kmeans2(host, k, minit="++", seed=seed, iter=1)
    lab = xp.asarray(labels)
    for _ in range(iters):
        onehot = (lab[:, None] == xp.arange(k)).astype(numpy.float64)          # (N, k)
        c = (onehot.T @ xd) / xp.maximum(onehot.sum(axis=0), 1)[:, None]      # (k, D)
        d = (xd * xd).sum(1)[:, None] - 2 * xd @ c.T + (c * c).sum(1)[None, :]
        new = d.argmin(axis=1)
        if bool((new == lab).all()):
            break
        lab = new
    return to_host(lab)


def purity(labels, truth):
    """Share of items whose cluster's most common true class is their own."""
    total = 0
    for c in numpy.unique(labels):
        total += numpy.bincount(truth[labels == c]).max()
    return total / len(labels)


def nmi(labels, truth):
    """Normalised mutual information I(U;V) / sqrt(H(U) H(V)) of two labelings."""
    n = len(labels)
    _, a = numpy.unique(labels, return_inverse=True)
    _, b = numpy.unique(truth, return_inverse=True)
    joint = numpy.zeros((a.max() + 1, b.max() + 1))
    numpy.add.at(joint, (a, b), 1)
    p = joint / n
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * numpy.log(p[nz] / (pa[:, None] * pb[None, :])[nz])).sum()
    ha, hb = -(pa * numpy.log(pa)).sum(), -(pb * numpy.log(pb)).sum()
    return float(mi / numpy.sqrt(ha * hb)) if ha > 0 and hb > 0 else 0.0


def class_averages(images, labels, k):
    """Mean image of each class, (k, H, W) float32 (zeros for an empty class)."""
    out = numpy.zeros((k,) + images.shape[1:], numpy.float32)
    for c in range(k):
        if (labels == c).any():
            out[c] = images[labels == c].mean(axis=0)
    return out


def sample_pairs(labels, n, rng):
    """n index pairs, half from one cluster (y = 0) and half from two clusters (y = 1).

    Returns
    -------
    i, j : int arrays (n,)
    y : float32 array (n,)
    """
    members = [numpy.nonzero(labels == c)[0] for c in numpy.unique(labels)]
    members = [m for m in members if len(m) > 0]
    i, j, y = [], [], []
    for t in range(n):
        if t % 2 == 0 or len(members) < 2:
            m = members[rng.integers(len(members))]
            a, b = rng.choice(len(m), 2, replace=False) if len(m) > 1 else (0, 0)
            i.append(m[a])                                  # two different images if possible
            j.append(m[b])
            y.append(0.0)
        else:
            a, b = rng.choice(len(members), 2, replace=False)
            i.append(members[a][rng.integers(len(members[a]))])
            j.append(members[b][rng.integers(len(members[b]))])
            y.append(1.0)
    return numpy.array(i), numpy.array(j), numpy.array(y, numpy.float32)


def cluster(images, k, rounds, xp, steps=150, batch_size=32, lr=1e-3, seed=0, truth=None,
            log=print, progress=False):
    """Cluster particle images (see the module docstring).

    Parameters
    ----------
    images : array (N, box, box)
        Particle images (normalised here, one statistic per image).
    k : int
        Number of clusters.
    rounds : int
        Siamese rounds after round 0.
    xp : module
        numpy or cupy.
    steps : int
        Training steps per round.
    batch_size : int
        Pairs per step.
    lr : float
    seed : int
    truth : int array (N,) or None
        True classes, for purity and NMI per round.
    log : callable
    progress : bool
        Show a tqdm progress bar over the training steps of all rounds.

    Returns
    -------
    labels : int array (N,)
    history : list of dict
        Per round: "round", "losses" (per step), and with ``truth`` "purity", "nmi".
    """
    rng = numpy.random.default_rng(seed)
    x = normalize_images(images)
    N, box = x.shape[0], x.shape[-1]
    labels = kmeans(principal_components(x.reshape(N, -1), min(50, N - 1)), k, seed)
    history = [{"round": 0, "losses": []}]

    def record(h):
        if truth is not None:
            h["purity"], h["nmi"] = purity(labels, truth), nmi(labels, truth)
            log("round %d: purity %.3f, NMI %.3f" % (h["round"], h["purity"], h["nmi"]))

    record(history[0])
    xd = to_device(x[:, None], xp)
    model = Siamese(box=box, seed=seed).to(xp, numpy.float32)
    params = Parameters(model)
    opt = Adam(params, lr=lr)
    from tqdm import tqdm
    bar = tqdm(total=rounds * steps, unit="step", disable=not progress, dynamic_ncols=True)
    for r in range(1, rounds + 1):
        model.train()
        losses = []
        bar.set_description("round %d of %d" % (r, rounds))
        for _ in range(steps):
            i, j, y = sample_pairs(labels, batch_size, rng)
            e1, e2 = model.forward_pair(xd[i], xd[j])
            loss, cache = contrastive_forward(e1, e2, xp.asarray(y))
            params.zero_grad()
            model.backward_pair(*contrastive_backward(cache))
            opt.step()
            losses.append(float(loss))
            bar.update(1)
        bar.set_postfix(loss="%.4g" % numpy.mean(losses))
        model.eval()
        emb = xp.concatenate([model.forward(xd[s:s + 256]) for s in range(0, N, 256)])
        labels = kmeans(emb, k, seed + r)
        history.append({"round": r, "losses": losses})
        record(history[-1])
    bar.close()
    return labels, history
