"""A PNG of the distillation curves (loss terms, t, sign flips, learning rate) logged by the callback."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_PANELS = (
    ("loss terms", ("loss", "distill_kl", "distill_hidden", "distill_ce"), True),
    ("temperature t", ("t",), True),
    ("sign flips per log interval", ("sign_flips",), True),
    ("learning rate", ("learning_rate",), False),
)


def plot_history(history: list[dict], path: str) -> str | None:
    """Write the plot to ``path``; returns the path, or None (with one warning) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("hf_onebit: matplotlib is not installed, no plot written (pip install 'hf_onebit[plot]')")
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (title, keys, log_scale) in zip(axes.flat, _PANELS):
        for key in keys:
            points = [(h["step"], h[key]) for h in history if key in h and h[key] is not None and h[key] > 0]
            if points:
                ax.plot(*zip(*points), label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        if log_scale and ax.lines:
            ax.set_yscale("log")
        if len(ax.lines) > 1:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
