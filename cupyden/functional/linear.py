"""Fully connected layer: y = x w^T + b.

Shapes: x (N, D), w (F, D), b (F,), y (N, F).
Backward: dx = dy w (N, D);  dw = dy^T x (F, D);  db = sum_n dy (F,).
"""


def linear_forward(x, w, b):
    """Returns y (N, F) and the cache (x, w)."""
    y = x @ w.T
    if b is not None:
        y += b
    return y, (x, w)


def linear_backward(dy, cache):
    """Returns (dx, dw, db)."""
    x, w = cache
    return dy @ w, dy.T @ x, dy.sum(axis=0)
