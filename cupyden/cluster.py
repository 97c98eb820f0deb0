"""Clustering particle images seen at any in-plane angle: a Siamese network and k-means,
over rounds.

Round 0: k-means on the principal components of the normalised images (the baseline; it
sees two copies of one view at different in-plane angles as different images). Each
later round trains the Siamese embedding with the contrastive loss on pairs of augmented
views (:func:`augment_views`: random in-plane rotation, shift and added noise):

* positives (y = 0): two views of one image, so the embedding learns to ignore the
  in-plane angle and shift (SimCLR's two augmented views of one image: Chen, Kornblith,
  Norouzi & Hinton 2020, ICML); from round 2 on, every other positive is two images of
  one current cluster (pairs mined from the clusters, as the seed did);
* negatives (y = 1): two different images in round 1, two images of different clusters
  from round 2 on;

then embeds every image, averaged over ``turns`` in-plane rotations
(:func:`invariant_embedding`), and reclusters by k-means. Class averages of particles at
random angles blur unless the members are aligned first: :func:`cupyden.align.align_classes`.

Which round is the result. The rounds' embedding ignores the in-plane angle, so on
particles that are not turned it cannot tell apart two views that differ mostly by an
in-plane rotation (a side view of a barrel at two tilts of its axis), which round 0's
principal components separate. Every round's classes are therefore scored without labels
(:func:`round_score`: the silhouette of the images in their classes, with one minus the
correlation after alignment as the distance, under the better of two alignment models,
shifts only or in-plane angle and shift), and the round with the highest score is
returned; round 0 is kept unless a later round beats it.

Metrics against known labels (simulations): purity (the share of images whose cluster's
majority class is their own class) and normalised mutual information
NMI = I(U; V) / sqrt(H(U) H(V)) (Strehl & Ghosh 2002).
"""

import numpy
import scipy.cluster.vq

from .align import align, align_classes, inverse, transform
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


def _disc_correlation(a, b, disc):
    """Pearson correlation of a[n] with b[n] over the pixels where ``disc`` is 1: (N,) host
    float64. a (N, H, W), b (N or 1, H, W), disc (H, W) of 0 and 1, one array module."""
    m = disc.sum()
    a = (a - (a * disc).sum(axis=(1, 2), keepdims=True) / m) * disc
    b = (b - (b * disc).sum(axis=(1, 2), keepdims=True) / m) * disc
    num = (a * b).sum(axis=(1, 2))
    return to_host(num / ((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)) + 1e-30) ** 0.5)


def silhouette(images, labels, k, rotate=True, max_shift=2.0, iterations=2, seed=0, chunk=256):
    """Mean silhouette of the images in their classes, with one minus the correlation after
    alignment as the distance (Rousseeuw 1987, J. Comput. Appl. Math. 20:53-65).

    Each class's members are aligned to its average (:func:`cupyden.align.align_classes`).
    For image n of class c, a_n = 1 - corr(n aligned, average of the *other* members of c)
    (leaving n out, so that an image does not match itself in a small class), b_n = the
    least 1 - corr(n aligned to the average of c', that average) over the other non-empty
    classes c', and s_n = (b_n - a_n) / max(a_n, b_n), in [-1, 1]; s_n = 0 for an image
    alone in its class (as Rousseeuw defines it) or when there is no other class. corr is
    Pearson's correlation inside the disc of diameter min(H, W). No true labels are used.

    Parameters
    ----------
    images : float array (N, H, W) (NumPy or CuPy)
    labels : int array (N,)
        Class of each image, 0 .. k - 1.
    k : int
    rotate : bool
        Align by in-plane angle and shift (True) or by shift only.
    max_shift : float
        Largest shift searched, px.
    iterations : int
        Alignment rounds of :func:`cupyden.align.align_classes`.
    seed : int
    chunk : int
        Images per batch.

    Returns
    -------
    float
        The mean of s_n over the images.
    """
    xp = get_array_module(images)
    labels = numpy.asarray(to_host(labels), int)
    N, H, W = images.shape
    averages, angles, shifts = align_classes(images, labels, k, iterations, max_shift, seed,
                                             rotate=rotate)
    averages = xp.asarray(averages, numpy.float64)
    counts = numpy.bincount(labels, minlength=k)
    yy, xx = numpy.mgrid[:H, :W]
    disc = xp.asarray(((yy - H // 2) ** 2 + (xx - W // 2) ** 2 < (min(H, W) // 2) ** 2)
                      .astype(numpy.float64))
    own, other = numpy.zeros(N), numpy.full(N, -numpy.inf)      # correlations
    ia, it = inverse(angles, shifts)
    for s in range(0, N, chunk):
        lab = labels[s:s + chunk]
        back = transform(images[s:s + chunk], ia[s:s + chunk],
                         it[s:s + chunk]).astype(numpy.float64)
        n = xp.asarray(counts[lab], numpy.float64)[:, None, None]
        # the class average without image n: (n_c average - image) / (n_c - 1)
        own[s:s + chunk] = _disc_correlation(
            back, (n * averages[xp.asarray(lab)] - back) / xp.maximum(n - 1, 1), disc)
    for c in numpy.flatnonzero(counts):
        a, t, _ = align(images, averages[c][None].astype(images.dtype), None, max_shift,
                        rotate=rotate)
        ia, it = inverse(a, t)
        for s in range(0, N, chunk):
            back = transform(images[s:s + chunk], ia[s:s + chunk], it[s:s + chunk])
            r = _disc_correlation(back.astype(numpy.float64), averages[c][None], disc)
            elsewhere = labels[s:s + chunk] != c
            other[s:s + chunk][elsewhere] = numpy.maximum(other[s:s + chunk], r)[elsewhere]
    a, b = 1 - own, 1 - other
    alone = (counts[labels] < 2) | ~numpy.isfinite(other)
    sil = numpy.where(alone, 0.0, (b - a) / numpy.maximum(numpy.maximum(a, b), 1e-12))
    return float(sil.mean())


def round_score(images, labels, k, max_shift=2.0, seed=0):
    """The unsupervised score that chooses the round: the larger of the :func:`silhouette`
    with shifts only and with in-plane angle and shift.

    Why two models: with angles searched, two classes whose averages differ mostly by an
    in-plane rotation are no farther apart than one class split in two, so on particles
    that are not turned a rotation-invariant clustering scores as well as the true one;
    with shifts only, classes of particles at random angles score near 0. The model that
    fits the data better decides.

    Parameters
    ----------
    images : float array (N, H, W) (NumPy or CuPy)
    labels : int array (N,)
    k : int
    max_shift : float
        Largest shift searched, px.
    seed : int

    Returns
    -------
    score : float
        In [-1, 1]; higher is better.
    rotate : bool
        Whether the score is that of the in-plane angle and shift model.
    """
    plain = silhouette(images, labels, k, False, max_shift, seed=seed)
    turned = silhouette(images, labels, k, True, max_shift, seed=seed)
    return (turned, True) if turned > plain else (plain, False)


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


def augment_views(x, rng, max_shift, noise):
    """Augmented views of images for contrastive training: each turned by a uniformly
    random in-plane angle, moved by a random shift in a disc of ``max_shift`` px and given
    independent white noise of standard deviation ``noise`` (SimCLR's two views of one
    image: Chen, Kornblith, Norouzi & Hinton 2020; the added noise keeps two views of one
    particle from matching on their shared noise alone).

    Parameters
    ----------
    x : float array (n, 1, H, W) (NumPy or CuPy)
    rng : numpy.random.Generator
    max_shift : float
        px.
    noise : float
        Standard deviation of the added noise, in units of the images' (normalised) values.

    Returns
    -------
    array like ``x``
    """
    xp = get_array_module(x)
    n = len(x)
    r, phi = max_shift * numpy.sqrt(rng.random(n)), rng.uniform(0, 2 * numpy.pi, n)
    shifts = numpy.stack([r * numpy.cos(phi), r * numpy.sin(phi)], -1)
    out = transform(x[:, 0], rng.uniform(0, 360, n), shifts)[:, None]
    if noise:
        out = out + xp.asarray(rng.standard_normal(out.shape) * noise, out.dtype)
    return out


def invariant_embedding(model, xd, turns=8, chunk=256):
    """The embedding averaged over ``turns`` in-plane rotations of each image: (N, D).

    Averaging a function over the rotation group makes it invariant to the group's
    rotations (here the ``turns`` multiples of 360 / turns degrees exactly, others
    approximately)."""
    xp = get_array_module(xd)
    N = len(xd)
    out = 0
    for t in range(turns):
        angle = numpy.full(N, 360.0 * t / turns)
        turned = xp.concatenate([transform(xd[s:s + chunk, 0], angle[s:s + chunk],
                                           numpy.zeros((len(xd[s:s + chunk]), 2)))[:, None]
                                 for s in range(0, N, chunk)])
        out = out + xp.concatenate([model.forward(turned[s:s + chunk]) for s in range(0, N, chunk)])
    return out / turns


def view_pairs(labels, n, rng, mined):
    """Pairs for one step: half positives (y = 0), half negatives (y = 1).

    Positives are two views of one image; with ``mined`` every other positive is two
    images of one cluster. Negatives are two images from different clusters when
    ``mined``, else two different images.

    Returns
    -------
    i, j : int arrays (n,)
    y : float32 array (n,)
    """
    N = len(labels)
    half = n // 2
    i = rng.integers(N, size=half)
    j = i.copy()
    if mined:
        ci, cj, _ = sample_pairs(labels, 2 * half, rng)
        same = numpy.arange(half) % 2 == 1
        i[same], j[same] = ci[0::2][same], cj[0::2][same]
        ni, nj = ci[1::2][:n - half], cj[1::2][:n - half]
    else:
        ni = rng.integers(N, size=n - half)
        nj = (ni + rng.integers(1, N, size=n - half)) % N
    y = numpy.concatenate([numpy.zeros(half), numpy.ones(n - half)]).astype(numpy.float32)
    return numpy.concatenate([i, ni]), numpy.concatenate([j, nj]), y


def cluster(images, k, rounds, xp, steps=150, batch_size=32, lr=1e-3, seed=0, truth=None,
            log=print, progress=False, view_shift=1.5, view_noise=0.5, turns=8,
            max_shift=2.0):
    """Cluster particle images seen at any in-plane angle (see the module docstring).

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
        Adam learning rate.
    seed : int
    truth : int array (N,) or None
        True classes, for purity and NMI per round.
    log : callable
    progress : bool
        Show a tqdm progress bar over the training steps of all rounds.
    view_shift : float
        Largest shift of an augmented view, px (:func:`augment_views`).
    view_noise : float
        Standard deviation of the noise added to each view (images have unit variance).
    turns : int
        In-plane rotations the embedding is averaged over (:func:`invariant_embedding`).
    max_shift : float
        Largest shift searched when scoring each round's classes (:func:`round_score`),
        px of ``images``.

    Returns
    -------
    labels : int array (N,)
        The classes of the chosen round (the highest :func:`round_score`, the earliest of
        equals); one line saying which and why goes to ``log``.
    history : list of dict
        Per round: "round", "labels" (N,), "losses" (per step), "score" and "rotate"
        (:func:`round_score`), "chosen" (bool), and with ``truth`` "purity", "nmi".
    """
    rng = numpy.random.default_rng(seed)
    x = normalize_images(images)
    N, box = x.shape[0], x.shape[-1]
    labels = kmeans(principal_components(x.reshape(N, -1), min(50, N - 1)), k, seed)
    history = [{"round": 0, "labels": labels, "losses": []}]

    def record(h):
        h["score"], h["rotate"] = round_score(xd[:, 0], labels, k, max_shift, seed)
        if truth is not None:
            h["purity"], h["nmi"] = purity(labels, truth), nmi(labels, truth)
            log("round %d: purity %.3f, NMI %.3f, score %.3f" % (h["round"], h["purity"],
                                                                  h["nmi"], h["score"]))

    xd = to_device(x[:, None], xp)
    record(history[0])
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
            # round 1 knows no clusters worth trusting (round 0 ignores rotations): views only
            i, j, y = view_pairs(labels, batch_size, rng, mined=r > 1)
            e1, e2 = model.forward_pair(augment_views(xd[i], rng, view_shift, view_noise),
                                        augment_views(xd[j], rng, view_shift, view_noise))
            loss, cache = contrastive_forward(e1, e2, xp.asarray(y))
            params.zero_grad()
            model.backward_pair(*contrastive_backward(cache))
            opt.step()
            losses.append(float(loss))
            bar.update(1)
        bar.set_postfix(loss="%.4g" % numpy.mean(losses))
        model.eval()
        labels = kmeans(invariant_embedding(model, xd, turns), k, seed + r)
        history.append({"round": r, "labels": labels, "losses": losses})
        record(history[-1])
    bar.close()
    best = max(history, key=lambda h: h["score"])              # the first of equal scores
    for h in history:
        h["chosen"] = h is best
    log("round %d chosen: the highest silhouette of the images in their classes, %.3f, "
        "aligned by %s (rounds 0..%d: %s)"
        % (best["round"], best["score"], "angle and shift" if best["rotate"] else "shift only",
           rounds, ", ".join("%.3f" % h["score"] for h in history)))
    return best["labels"], history
