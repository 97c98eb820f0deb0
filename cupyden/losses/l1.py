"""Mean absolute error: L = (1/M) sum |pred - target|, dL/dpred = sign(pred - target) / M
(0 at the kink, where the subgradient 0 is taken)."""


def l1_forward(pred, target):
    """L1 forward.

    Parameters
    ----------
    pred, target : array, same shape, float

    Returns
    -------
    loss : 0-d array
    cache : (diff, M)
    """
    diff = pred - target
    return abs(diff).mean(), (diff, diff.size)


def l1_backward(cache):
    """dL/dpred = sign(pred - target) / M."""
    diff, M = cache
    return (diff > 0).astype(diff.dtype) / M - (diff < 0).astype(diff.dtype) / M
