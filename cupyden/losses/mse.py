"""Mean squared error: L = (1/M) sum (pred - target)^2, dL/dpred = (2/M)(pred - target)."""


def mse_forward(pred, target):
    """MSE forward.

    Parameters
    ----------
    pred, target : array, same shape (N, C, H, W), float

    Returns
    -------
    loss : 0-d array
    cache : (diff, M)
        diff = pred - target; M = number of elements.
    """
    diff = pred - target
    return (diff * diff).mean(), (diff, diff.size)


def mse_backward(cache):
    """dL/dpred = 2 (pred - target) / M, shape of pred."""
    diff, M = cache
    return diff * (2.0 / M)
