"""Figures (matplotlib, Agg): loss curve, before/after panels. Written atomically."""

import numpy

from .io.atomic import atomic_output


def _figure(*args, **kw):
    """matplotlib.pyplot.subplots on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kw)


def save_png(fig, path, dpi=100):
    """Save a figure to a temporary PNG beside ``path``, then rename it."""
    import matplotlib.pyplot as plt
    try:
        with atomic_output(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


def loss_curve(history, path):
    """Training and validation loss against step (log scale).

    Parameters
    ----------
    history : list of dict
        Rows with "step", "train_loss", "val_loss".
    path : str
    """
    fig, ax = _figure(figsize=(6, 4))
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["train_loss"] for r in history], label="train")
    ax.plot(steps, [r["val_loss"] for r in history], label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    save_png(fig, path)


def contrast_limits(image, low=0.5, high=99.5):
    """Display range (percentiles) shared by panels shown at the same contrast."""
    return tuple(float(v) for v in numpy.percentile(image, [low, high]))


def before_after(before, after, path, titles=("raw", "denoised"), pixel_size=None,
                 same_contrast=False):
    """Side-by-side panels of a micrograph before and after denoising.

    Parameters
    ----------
    before, after : arrays (H, W)
    path : str
    titles : (str, str)
    pixel_size : float or None
        Å/px, for the scale in the title.
    same_contrast : bool
        One display range for both panels (for images in the same units), else each
        panel at its own 0.5-99.5 percentile range.
    """
    H, W = before.shape
    if W > 1.5 * H:                                   # wide strips: one above the other
        fig, axes = _figure(2, 1, figsize=(12, 2 * 12 * H / W + 1.2))
    else:
        fig, axes = _figure(1, 2, figsize=(12, 6.4))
    lim_b = contrast_limits(before)
    lims = (lim_b, lim_b if same_contrast else contrast_limits(after))
    for ax, img, title, (lo, hi) in zip(axes, (before, after), titles, lims):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if pixel_size:
            title += "  (%.2f Å/px, %d x %d px)" % (pixel_size, img.shape[1], img.shape[0])
        ax.set_title(title)
        ax.axis("off")
    save_png(fig, path)
