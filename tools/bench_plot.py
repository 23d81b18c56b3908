"""``fxopt bench --plot``: speed vs eager per configuration, one panel per model, accuracy on each bar.

    plot_speedups(results, "bench.png", title=machine_header())

Bars are the medians of the interleaved runs (the table's *speed vs eager*); a dashed line marks eager (1×);
failed configurations get an empty slot with the word "failed", so a missing bar is never silent.
"""
from __future__ import annotations

import math
import textwrap


def plot_speedups(results, path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    from fxopt.tools.bench import format_accuracy

    models = list(dict.fromkeys(m.model for m in results))
    counts = [sum(1 for m in results if m.model == name) for name in models]
    fig, axes = plt.subplots(len(models), 1, figsize=(10, 1.0 + 0.9 * len(models) + 0.32 * sum(counts)),
                             squeeze=False, gridspec_kw={"height_ratios": counts})
    for ax, name in zip(axes[:, 0], models):
        rows = [m for m in results if m.model == name]
        labels = [m.config for m in rows]
        speeds = [m.speedup if m.accuracy and not math.isnan(m.speedup) else 0.0 for m in rows]
        colors = ["#2b7bba" if m.config.startswith("fxopt") else "#9e9e9e" for m in rows]
        bars = ax.barh(range(len(rows)), speeds, color=colors)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.set_xlabel("speed vs eager (×, higher is faster)")
        ax.set_title(f"{name} ({rows[0].shape})", fontsize=10, loc="left")
        for bar, m, speed in zip(bars, rows, speeds):
            text = f"{speed:.2f}×  {format_accuracy(m.accuracy)}" if speed else "failed"
            ax.text(max(speed, 0.02), bar.get_y() + bar.get_height() / 2, "  " + text, va="center", fontsize=7)
        ax.set_xlim(0, max(speeds + [1.0]) * 1.9)
    if title:
        fig.suptitle(textwrap.fill(title, 140), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
