"""Figures (matplotlib, Agg): loss curve, image panels, power spectra, FRC curves.
Every PNG is written atomically."""

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


def loss_curve(history, path, val_label="validation"):
    """Training and validation loss against step (log scale).

    Parameters
    ----------
    history : list of dict
        Rows with "step", "train_loss", "val_loss".
    path : str
    val_label : str
        The validation curve's legend (what was validated).
    """
    fig, ax = _figure(figsize=(6, 4))
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["train_loss"] for r in history], label="train")
    ax.plot(steps, [r["val_loss"] for r in history], label=val_label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    save_png(fig, path)


def contrast_limits(image, low=0.5, high=99.5):
    """Display range (percentiles) shared by panels shown at the same contrast."""
    return tuple(float(v) for v in numpy.percentile(image, [low, high]))


def panels(images, titles, path, pixel_size=None, limits=None):
    """Images side by side (one above the other for wide strips).

    Parameters
    ----------
    images : list of arrays (H, W)
    titles : list of str
    path : str
    pixel_size : float or None
        Å/px, for the titles.
    limits : (low, high) or None
        One display range for every panel (the same contrast); None gives each panel its
        own 0.5-99.5 percentile range.
    """
    H, W = images[0].shape
    n = len(images)
    if W > 1.5 * H:                                   # wide strips: one above the other
        fig, axes = _figure(n, 1, figsize=(12, n * 12 * H / W + 0.6 * n), squeeze=False)
    else:
        fig, axes = _figure(1, n, figsize=(6 * n, 6.4), squeeze=False)
    for ax, img, title in zip(axes.ravel(), images, titles):
        lo, hi = limits or contrast_limits(img)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if pixel_size:
            title += "  (%.2f Å/px, %d x %d px)" % (pixel_size, img.shape[1], img.shape[0])
        ax.set_title(title)
        ax.axis("off")
    save_png(fig, path)


def before_after(before, after, path, titles=("raw", "denoised"), pixel_size=None,
                 same_contrast=False):
    """Two panels, a micrograph before and after denoising (:func:`panels`); with
    ``same_contrast`` both use the display range of ``before``."""
    panels([before, after], list(titles), path, pixel_size,
           contrast_limits(before) if same_contrast else None)


def curves(series, path, xlabel, ylabel, log_y=False, hlines=(), title=None):
    """Line plot of named curves against spatial frequency.

    Parameters
    ----------
    series : list of (label, x, y)
    path : str
    xlabel, ylabel : str
    log_y : bool
    hlines : sequence of (y, label)
        Horizontal reference lines (e.g. the FRC thresholds 0.5 and 0.143).
    title : str or None
    """
    fig, ax = _figure(figsize=(7, 4.5))
    for label, x, y in series:
        ax.plot(x, y, label=label, lw=1.2)
    for y, label in hlines:
        ax.axhline(y, color="gray", lw=0.8, ls="--")
        ax.text(ax.get_xlim()[1], y, " " + label, va="center", fontsize=8, color="gray")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    save_png(fig, path)
