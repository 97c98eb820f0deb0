"""Batch normalisation over (N, H, W) per channel (Ioffe & Szegedy 2015, Algorithm 1).

Training:  mu = mean(x), var = mean((x - mu)^2)  over N, H, W (biased variance);
           xhat = (x - mu) / sqrt(var + eps);   y = gamma * xhat + beta.
Evaluation: the running mean and variance replace mu and var.
Backward (training), with M = N * H * W elements per channel:
    dbeta = sum(dy),  dgamma = sum(dy * xhat),  dxhat = dy * gamma,
    dx = (M * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)) / (M * sqrt(var + eps)).
"""

from typing import NamedTuple


class BatchNormCache(NamedTuple):
    """xhat : array (N, C, H, W); inv_std : array (C,), 1/sqrt(var + eps);
    gamma : array (C,); training : bool."""
    xhat: object
    inv_std: object
    gamma: object
    training: bool


def batchnorm2d_forward(x, gamma, beta, running_mean, running_var, training,
                        momentum=0.1, eps=1e-5):
    """Batch normalisation forward; updates the running statistics in place when training.

    Parameters
    ----------
    x : array (N, C, H, W)
    gamma, beta : array (C,)
        Scale and shift.
    running_mean, running_var : array (C,)
        Updated as r = (1 - momentum) * r + momentum * batch statistic, with the unbiased
        batch variance (PyTorch's convention, so its weights load unchanged).
    training : bool
    momentum, eps : float

    Returns
    -------
    y : array (N, C, H, W)
    cache : BatchNormCache
    """
    if training:
        mu = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        M = x.size // x.shape[1]
        running_mean *= 1 - momentum
        running_mean += momentum * mu
        running_var *= 1 - momentum
        running_var += momentum * var * (M / max(M - 1, 1))
    else:
        mu, var = running_mean, running_var
    inv_std = 1.0 / (var + eps) ** 0.5
    xhat = (x - mu[:, None, None]) * inv_std[:, None, None]
    y = gamma[:, None, None] * xhat + beta[:, None, None]
    return y, BatchNormCache(xhat, inv_std, gamma, training)


def batchnorm2d_backward(dy, cache):
    """Batch normalisation backward.

    Returns
    -------
    dx : array (N, C, H, W)
    dgamma, dbeta : array (C,)
    """
    xhat, inv_std, gamma = cache.xhat, cache.inv_std, cache.gamma
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dxhat = dy * gamma[:, None, None]
    if not cache.training:                     # statistics are constants in evaluation
        return dxhat * inv_std[:, None, None], dgamma, dbeta
    M = dy.size // dy.shape[1]
    dx = (M * dxhat - dxhat.sum(axis=(0, 2, 3))[:, None, None]
          - xhat * (dxhat * xhat).sum(axis=(0, 2, 3))[:, None, None])
    return dx * (inv_std / M)[:, None, None], dgamma, dbeta
