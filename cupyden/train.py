"""The training loop: one place, readable top to bottom.

One step is: model.forward -> loss.forward -> loss.backward -> model.backward -> Adam.
"""

from .losses import LOSSES


def train_step(model, params, optimizer, loss, x, target):
    """One optimisation step on a batch.

    Parameters
    ----------
    model : cupyden.models.base.Model
        In training mode.
    params : cupyden.optim.Parameters
        The model's flat parameter buffer.
    optimizer : cupyden.optim.Adam
    loss : str
        A key of ``cupyden.losses.LOSSES`` ("mse", "l1").
    x, target : array (N, C, H, W)
        Input patches and their targets (the other noisy view, or the clean image).

    Returns
    -------
    0-d array
        The loss before the update (on the device; no synchronisation).
    """
    forward, backward = LOSSES[loss]
    y = model.forward(x)
    value, cache = forward(y, target)
    params.zero_grad()
    model.backward(backward(cache))
    optimizer.step()
    return value


def evaluate(model, loss, x, target):
    """Loss of the model on (x, target) without keeping caches; returns a float."""
    forward, _ = LOSSES[loss]
    keep = [(layer, layer.training, layer.keep_cache) for _, layer in model.named_layers()]
    model.eval()
    try:
        value, _ = forward(model.forward(x), target)
    finally:
        for layer, training, keep_cache in keep:
            layer.training, layer.keep_cache = training, keep_cache
    return float(value)
