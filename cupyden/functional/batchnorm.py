"""Batch normalisation per channel over the batch and every spatial axis (Ioffe & Szegedy
2015, Algorithm 1); the same code for images (N, C, H, W) and volumes (N, C, D, H, W).

Training:  mu = mean(x), var = mean((x - mu)^2)  over N and the spatial axes (biased
           variance); xhat = (x - mu) / sqrt(var + eps);   y = gamma * xhat + beta.
Evaluation: the running mean and variance replace mu and var.
Backward (training), with M = N * (spatial size) elements per channel:
    dbeta = sum(dy),  dgamma = sum(dy * xhat),  dxhat = dy * gamma,
    dx = (M * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)) / (M * sqrt(var + eps)).
"""

from typing import NamedTuple


class BatchNormCache(NamedTuple):
    """xhat : array like x; inv_std : array (C,), 1/sqrt(var + eps);
    gamma : array (C,); training : bool."""
    xhat: object
    inv_std: object
    gamma: object
    training: bool


def _axes(x):
    """The reduction axes (all but the channel axis 1) and a (C,) -> broadcast reshaper."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return axes, lambda v: v.reshape(shape)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, training,
                      momentum=0.1, eps=1e-5):
    """Batch normalisation forward; updates the running statistics in place when training.

    Parameters
    ----------
    x : array (N, C, H, W) or (N, C, D, H, W)
    gamma, beta : array (C,)
        Scale and shift.
    running_mean, running_var : array (C,)
        Updated as r = (1 - momentum) * r + momentum * batch statistic, with the unbiased
        batch variance (PyTorch's convention, so its weights load unchanged).
    training : bool
    momentum, eps : float

    Returns
    -------
    y : array like x
    cache : BatchNormCache
    """
    axes, c = _axes(x)
    if training:
        mu = x.mean(axis=axes)
        var = x.var(axis=axes)
        M = x.size // x.shape[1]
        running_mean *= 1 - momentum
        running_mean += momentum * mu
        running_var *= 1 - momentum
        running_var += momentum * var * (M / max(M - 1, 1))
    else:
        mu, var = running_mean, running_var
    inv_std = 1.0 / (var + eps) ** 0.5
    xhat = (x - c(mu)) * c(inv_std)
    y = c(gamma) * xhat + c(beta)
    return y, BatchNormCache(xhat, inv_std, gamma, training)


def batchnorm_backward(dy, cache):
    """Batch normalisation backward.

    Returns
    -------
    dx : array like dy
    dgamma, dbeta : array (C,)
    """
    axes, c = _axes(dy)
    xhat, inv_std, gamma = cache.xhat, cache.inv_std, cache.gamma
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    dxhat = dy * c(gamma)
    if not cache.training:                     # statistics are constants in evaluation
        return dxhat * c(inv_std), dgamma, dbeta
    M = dy.size // dy.shape[1]
    dx = M * dxhat - c(dxhat.sum(axis=axes)) - xhat * c((dxhat * xhat).sum(axis=axes))
    return dx * c(inv_std / M), dgamma, dbeta
