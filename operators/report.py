"""``describe(ds, out_dir)``: the dataset's statistics as PNG histograms, an HTML page and a JSON file.

Histograms are drawn with matplotlib when it is importable, else with Pillow. The page (``index.html``) embeds
every PNG and a table of the statistics; ``stats.json`` holds the same numbers.

>>> from datacopilot.operators.report import describe
>>> stats = describe(ds, "report/")  # doctest: +SKIP
>>> sorted(os.listdir("report/"))  # doctest: +SKIP
['answer_chars.png', 'index.html', 'question_chars.png', 'stats.json', 'turns.png']
"""

from __future__ import annotations

import html
import json
import os

from datacopilot.errors import DataCopilotError

from .evaluate import DatasetStats

_COLUMNS = ("count", "mean", "std", "min", "p50", "p90", "p99", "max")


def describe(ds, out_dir: str, num_workers: int = 1, mode: str = "thread", **params) -> dict:
    """Compute :class:`~datacopilot.operators.evaluate.DatasetStats` over ``ds`` (``params`` go to it: images,
    tokenizer, languages, bins, root), write ``<metric>.png`` histograms, ``index.html`` and ``stats.json``
    into ``out_dir`` (created), and return the statistics.

    >>> import datacopilot as dc, tempfile
    >>> ds = dc.MMDataset.from_rows([{"conversations": [{"from": "human", "value": "hi"},
    ...                                                 {"from": "gpt", "value": "hello"}]}], schema="MM")
    >>> describe(ds, tempfile.mkdtemp())["metrics"]["turns"]["mean"]
    2.0
    """
    from .run import evaluate

    if not isinstance(out_dir, str) or not out_dir:
        raise DataCopilotError(f"`out_dir` must be a directory path, got {out_dir!r}")
    stats = evaluate(ds, DatasetStats(**params), num_workers=num_workers, mode=mode)
    os.makedirs(out_dir, exist_ok=True)
    pngs = []
    for name, m in stats["metrics"].items():
        if m.get("count"):
            path = os.path.join(out_dir, f"{name}.png")
            hist = m["histogram"]
            draw_bars(path, hist["edges"], hist["counts"], m["label"])
            pngs.append((name, m["label"], f"{name}.png"))
    if stats.get("languages"):
        langs = stats["languages"]
        draw_bars(os.path.join(out_dir, "languages.png"), None, list(langs.values()), "rows per language",
                  labels=list(langs))
        pngs.append(("languages", "rows per language", "languages.png"))
    with open(os.path.join(out_dir, "stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=1)
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as f:
        f.write(render_html(stats, pngs, title=f"{ds.schema.name} dataset, {len(ds)} rows"))
    return stats


def render_html(stats: dict, pngs: list[tuple[str, str, str]], title: str = "dataset") -> str:
    """The report page: a table of every metric's summary, languages, then the histogram images."""
    e = html.escape
    head = "".join(f"<th>{c}</th>" for c in ("metric",) + _COLUMNS)
    rows = []
    for name, m in stats["metrics"].items():
        cells = "".join(f"<td>{_fmt(m.get(c))}</td>" for c in _COLUMNS)
        rows.append(f"<tr><td title='{e(name)}'>{e(m['label'])}</td>{cells}</tr>")
    extra = f"<p>rows: {stats['rows']}; unreadable images: {stats.get('images_unreadable', 0)}</p>"
    if stats.get("languages"):
        extra += "<p>languages: " + ", ".join(f"{e(k)} {v}" for k, v in stats["languages"].items()) + "</p>"
    figures = "".join(f"<figure><img src='{e(src)}' alt='{e(label)}'><figcaption>{e(label)}</figcaption></figure>"
                      for _, label, src in pngs)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}figure{display:inline-block;margin:1em}"
            f"</style></head><body><h1>{e(title)}</h1>{extra}<table><tr>{head}</tr>{''.join(rows)}</table>"
            f"{figures}</body></html>\n")


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def draw_bars(path: str, edges: list | None, counts: list, title: str, labels: list | None = None) -> None:
    """A bar chart as PNG: a histogram over ``edges``, or one bar per label."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return _draw_pillow(path, counts, title, labels or _edge_labels(edges))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=90)
    if edges is not None:
        ax.stairs(counts, edges, fill=True, color="#4c72b0")
    else:
        ax.bar(labels, counts, color="#4c72b0")
    ax.set_title(title)
    ax.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _edge_labels(edges) -> list[str]:
    return [f"{edges[i]:.4g}" for i in range(len(edges) - 1)]


def _draw_pillow(path: str, counts: list, title: str, labels: list) -> None:
    from PIL import Image, ImageDraw

    w, h, pad = 540, 315, 30
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, 8), title, fill="black")
    top = max(max(counts), 1) if counts else 1
    bw = (w - 2 * pad) / max(len(counts), 1)
    for i, c in enumerate(counts):
        x0 = pad + i * bw
        d.rectangle([x0, h - pad - (h - 2 * pad - 10) * c / top, x0 + bw - 1, h - pad], fill=(76, 114, 176))
    d.line([pad, h - pad, w - pad, h - pad], fill="black")
    if labels:
        d.text((pad, h - pad + 4), str(labels[0]), fill="black")
        d.text((w - pad - 40, h - pad + 4), str(labels[-1]), fill="black")
    img.save(path, "PNG")
