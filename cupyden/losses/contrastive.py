"""Contrastive loss for Siamese embeddings (Hadsell, Chopra & LeCun 2006, eq. 4):

    L = 1/(2N) sum_n [ (1 - y_n) d_n^2 + y_n max(m - d_n, 0)^2 ],   d_n = ||e1_n - e2_n||

with y = 0 for a pair from the same cluster (pulled together) and y = 1 for a pair from
different clusters (pushed apart to at least the margin m, here 2).

Backward, with u_n = e1_n - e2_n:

    dL/de1_n = (1/N) [ (1 - y_n) u_n - y_n max(m - d_n, 0) u_n / d_n ],   dL/de2_n = -dL/de1_n

(the second term's 1/d_n needs d_n > 0; gradient checks sample away from d = 0 and d = m).
"""

MARGIN = 2.0


def contrastive_forward(e1, e2, y, margin=MARGIN):
    """Contrastive loss.

    Parameters
    ----------
    e1, e2 : arrays (N, D)
        Embeddings of the two images of each pair.
    y : array (N,)
        0 for same-cluster pairs, 1 for different-cluster pairs.
    margin : float

    Returns
    -------
    loss : 0-d array
    cache : tuple
    """
    u = e1 - e2
    d = (u * u).sum(axis=1) ** 0.5
    hinge = margin - d
    hinge = hinge * (hinge > 0)
    loss = ((1 - y) * d * d + y * hinge * hinge).sum() / (2 * len(d))
    return loss, (u, d, hinge, y)


def contrastive_backward(cache):
    """Returns (de1, de2), each (N, D)."""
    u, d, hinge, y = cache
    N = len(d)
    # hinge / d: where d = 0 the hinge term has no direction (u = 0); 1e-12 avoids 0/0
    coef = ((1 - y) - y * hinge / (d + 1e-12)) / N
    de1 = coef[:, None] * u
    return de1, -de1
