"""The loss curve of a run as a PNG: matplotlib when it imports, otherwise a plain Pillow drawing."""

from __future__ import annotations

import os


def save_loss_curve(history: list[dict], path: str, title: str = "training loss") -> str:
    """Draw loss per optimizer step from ``history`` (dicts with ``step`` and ``loss``) to ``path``; returns it.

    >>> save_loss_curve([{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}], "/tmp/loss.png")  # doctest: +SKIP
    '/tmp/loss.png'
    """
    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # matplotlib missing or broken: draw it ourselves
        return _pillow_curve(steps, losses, path, title)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, marker="o" if len(steps) <= 30 else None, linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (sum of token losses / target tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _pillow_curve(steps: list[int], losses: list[float], path: str, title: str) -> str:
    from PIL import Image, ImageDraw

    w, h, m = 600, 350, 45
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([m, m // 2, w - m // 2, h - m], outline="black")
    draw.text((m, 4), title, fill="black")
    if losses:
        lo, hi = min(losses), max(losses)
        span_y = (hi - lo) or 1.0
        span_x = (max(steps) - min(steps)) or 1
        pts = [(m + (s - min(steps)) / span_x * (w - 1.5 * m), (h - m) - (v - lo) / span_y * (h - 1.5 * m))
               for s, v in zip(steps, losses)]
        if len(pts) > 1:
            draw.line(pts, fill=(31, 119, 180), width=2)
        for x, y in pts if len(pts) <= 30 else []:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(31, 119, 180))
        draw.text((4, m // 2), f"{hi:.3g}", fill="black")
        draw.text((4, h - m - 10), f"{lo:.3g}", fill="black")
        draw.text((m, h - m + 6), str(min(steps)), fill="black")
        draw.text((w - m, h - m + 6), str(max(steps)), fill="black")
    img.save(path)
    return path


def save_bars(groups: list[str], series: dict[str, list], chance: list[float] | None, path: str,
              title: str = "accuracy") -> str:
    """A grouped bar chart in [0, 1] to ``path``: per group (e.g. a question type) one bar per series (None =
    not measured, no bar), and a dashed mark at ``chance[i]`` across group ``i``; returns ``path``.

    >>> save_bars(["shape", "color"], {"accuracy": [0.9, 0.4]}, [0.2, 0.14], "/tmp/acc.png")  # doctest: +SKIP
    '/tmp/acc.png'
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # matplotlib missing or broken: draw it ourselves
        return _pillow_bars(groups, series, chance, path, title)
    names = list(series)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(groups) + 3), 3.5), dpi=100)
    for j, name in enumerate(names):
        xs = [i - 0.4 + width * (j + 0.5) for i, v in enumerate(series[name]) if v is not None]
        ax.bar(xs, [v for v in series[name] if v is not None], width, label=name)
    for i, c in enumerate(chance or []):
        ax.hlines(c, i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1,
                  label="chance" if i == 0 else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _pillow_bars(groups, series, chance, path, title) -> str:
    from PIL import Image, ImageDraw

    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    w, h, m = max(500, 110 * len(groups) + 80), 350, 45
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    draw.text((m, 4), title + "  (" + ", ".join(series) + "; dashed: chance)", fill="black")
    top, bottom = m // 2 + 10, h - m
    draw.rectangle([m, top, w - m // 2, bottom], outline="black")
    slot = (w - 1.5 * m) / max(1, len(groups))
    bar = slot * 0.8 / max(1, len(series))
    for i, g in enumerate(groups):
        x0 = m + i * slot + slot * 0.1
        for j, vals in enumerate(series.values()):
            v = vals[i]
            if v is not None:
                draw.rectangle([x0 + j * bar, bottom - v * (bottom - top), x0 + (j + 1) * bar - 2, bottom],
                               fill=palette[j % len(palette)])
        if chance:
            y = bottom - chance[i] * (bottom - top)
            for x in range(int(x0), int(x0 + slot * 0.8), 6):
                draw.line([(x, y), (x + 3, y)], fill="black")
        draw.text((x0, bottom + 6), g, fill="black")
    img.save(path)
    return path
