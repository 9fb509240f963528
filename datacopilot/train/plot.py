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
