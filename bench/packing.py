"""Packing benchmark: fill rate and speed of exact-fit and best-fit decreasing against the InTokens/MixToken baseline.

Two synthetic length distributions, 1,000,000 samples each (seeded):

- ``llava``: LLaVA-665k-like. 90% of samples carry one image (576 tokens, CLIP ViT-L/336 on a 24x24 grid) plus a
  lognormal conversation (median 120 tokens, sigma 1.0); 10% are text-only (lognormal, median 400, sigma 1.0,
  like the ShareGPT part). Packs of 2048 tokens; the few longer samples are truncated (and counted).
- ``text``: text-heavy SFT. Lognormal, median 200 tokens, sigma 1.0, with the long tail cut at 4096 (the pack
  size) as tokenization at ``max_length=4096`` leaves it.

Measured side by side on the same lengths:

1. fill rate = real tokens / (rows * row length) for exact-fit decreasing (``pack()``, the default), best-fit
   decreasing (``strategy="bfd"``), the bounded stream (``strategy="stream"``, window 4096), first fit in input
   order (``strategy="first_fit"``, the InTokens/MixToken rule) and no packing: batches of 8 in input order, each
   padded to its longest sample; next to them the volume bound sum / (ceil(sum / L) * L), which no packing can
   beat (L = row length, sum = tokens after truncation);
2. packing speed in samples/s on the 1,000,000 lengths (best of ``--repeat``), with the numba JIT compile time of
   a cold cache (a fresh process with an empty ``NUMBA_CACHE_DIR``) and the first-call time of this process (its
   on-disk cache load) reported apart;
3. (``--train``) training throughput, packed vs padded: the part in ``bench/train_throughput.py`` (see the hook
   at the end of ``main``).

Prints a table and writes it to ``bench/RESULTS_packing.md``.

    python bench/packing.py            # 1,000,000 lengths per distribution
    python bench/packing.py --n 100000 --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

DISTRIBUTIONS = {
    "llava": ("LLaVA-665k-like (576 image tokens on 90% + lognormal text)", 2048),
    "text": ("text-heavy SFT (lognormal, median 200, sigma 1.0, tail cut at 4096)", 4096),
}
TARGET_FILL = 0.98
TARGET_SPEED = 1_000_000
DEFAULT = "exact_fit"
STRATEGIES = ("exact_fit", "bfd", "stream", "first_fit")


def lengths_for(name: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name == "llava":
        has_image = rng.random(n) < 0.9
        text = np.where(has_image, rng.lognormal(np.log(120), 1.0, n), rng.lognormal(np.log(400), 1.0, n))
        return np.maximum(1, has_image * 576 + text.astype(np.int64))
    return np.clip(rng.lognormal(np.log(200), 1.0, n).astype(np.int64), 1, 4096)


def padded_batches_fill(lengths: np.ndarray, max_length: int, batch: int = 8) -> float:
    """Fill of batches of ``batch`` samples in input order, each padded to its longest (capped at max_length)."""
    lens = np.minimum(lengths, max_length)
    starts = np.arange(0, len(lens), batch)
    longest = np.maximum.reduceat(lens, starts)
    sizes = np.diff(np.append(starts, len(lens)))
    return float(lens.sum() / (longest * sizes).sum())


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


COLD = """
import time, numpy as np
t = time.perf_counter()
from datacopilot.kernels import pack
pack(np.array([5, 3, 2, 4]), 7); pack(np.array([5, 3, 2, 4]), 7, strategy="bfd")
pack(np.array([5, 3]), 7, strategy="first_fit")
print(time.perf_counter() - t)
"""


def cold_compile_seconds() -> float:
    """Import + first pack() in a fresh process whose numba cache is empty: the JIT compile a new machine pays."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = subprocess.run([sys.executable, "-c", COLD], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(args) -> list[str]:
    from datacopilot.kernels import pack

    load_start = os.getloadavg()[0]
    t = time.perf_counter()
    pack(np.array([5, 3, 2, 4]), 7)
    pack(np.array([5, 3, 2, 4]), 7, strategy="bfd")
    pack(np.array([5, 3]), 7, strategy="first_fit")
    first_call = time.perf_counter() - t
    cold = cold_compile_seconds()

    fill_rows, speed_rows, notes = [], [], []
    for name, (label, max_length) in DISTRIBUTIONS.items():
        lengths = lengths_for(name, args.n, args.seed)
        plans, secs = {}, {}
        for strategy in STRATEGIES:
            plans[strategy] = pack(lengths, max_length, strategy=strategy)
            secs[strategy] = best_time(lambda s=strategy, x=lengths, m=max_length: pack(x, m, strategy=s),
                                       args.repeat)
        ours, bfd, ff = plans[DEFAULT], plans["bfd"], plans["first_fit"]
        pad = padded_batches_fill(lengths, max_length)
        bound = volume_bound(lengths, max_length)
        fill_rows.append(
            f"| {name} | {max_length} | {ours.fill_rate:.2%} | {bfd.fill_rate:.2%} | {plans['stream'].fill_rate:.2%} "
            f"| {ff.fill_rate:.2%} | {pad:.2%} | {bound:.2%} | {ours.fill_rate / bfd.fill_rate:.3f}x "
            f"| {ours.fill_rate / ff.fill_rate:.2f}x | {ours.fill_rate / pad:.2f}x "
            f"| {'pass' if ours.fill_rate >= TARGET_FILL else 'FAIL'} |")
        s, b = ours.stats(), bfd.stats()
        notes.append(f"- `{name}`: {label}; mean {lengths.mean():.0f} tokens, median {np.median(lengths):.0f}, "
                     f"max {lengths.max()}; {s['truncated']:,} samples over {max_length} truncated "
                     f"({s['truncated_tokens']:,} tokens cut, {s['truncated_tokens'] / lengths.sum():.3%}). "
                     f"Packs: volume bound {-(-s['tokens'] // max_length):,}; exact fit {s['packs']:,} "
                     f"({s['samples_per_pack']:.2f} samples per pack); best-fit decreasing {b['packs']:,} "
                     f"({b['packs'] / s['packs'] - 1:+.1%}); first fit {ff.n_packs:,} "
                     f"({ff.n_packs / s['packs'] - 1:+.1%}).")
        notes.append("  " + waste_shape(ours, "exact fit", max_length))
        if bfd.fill_rate < TARGET_FILL:
            notes.append("  " + waste_shape(bfd, "best-fit decreasing", max_length) + BFD_WHY)
        for strategy in STRATEGIES:
            rate = args.n / secs[strategy]
            ok = "pass" if rate >= TARGET_SPEED else "FAIL"
            speed_rows.append(f"| {name} | {strategy} | {secs[strategy] * 1000:.0f} ms | {rate / 1e6:.2f} M/s "
                              f"| {ok if strategy == DEFAULT else '-'} |")
        print(fill_rows[-1], flush=True)

    lines = [
        "# Packing benchmark results", "",
        f"Command: `python bench/packing.py{' --n ' + str(args.n) if args.n != 1_000_000 else ''}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}  ",
        f"Versions: Python {platform.python_version()}, numpy {np.__version__}, numba {_numba_version()}  ",
        (f"Load average at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f} (other work on the machine "
         "slows the timings)  "),
        f"Samples per distribution: {args.n:,} (seed {args.seed}); timings are the best of {args.repeat}.", "",
        "## Fill rate (real tokens / (rows x row length))", "",
        ("| lengths | max_length | exact fit (default) | best-fit decreasing | stream (window 4096) "
         "| first fit in input order (InTokens/MixToken) | padded batches of 8 | volume bound | exact / BFD "
         "| exact / first fit | exact / padded | exact >= 98% |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *fill_rows, "",
        *notes, "",
        "## Packing speed (1 core, numba)", "",
        "| lengths | strategy | time | samples/s | >= 1 M/s (default) |", "|---|---|---|---|---|",
        *speed_rows, "",
        (f"JIT compile on a cold cache (fresh process, empty `NUMBA_CACHE_DIR`, import included): {cold:.2f} s. "
         f"First call in a warm process (loads the on-disk cache): {first_call * 1000:.0f} ms. "
         "Neither is in the timings above."), "",
    ]
    return lines


def volume_bound(lengths: np.ndarray, max_length: int) -> float:
    """The best fill any packing can reach: tokens / (ceil(tokens / L) * L), tokens counted after truncation."""
    tokens = int(np.minimum(lengths, max_length).sum())
    return tokens / (-(-tokens // max_length) * max_length)


BFD_WHY = (" Image samples (576 + text tokens) fit only 2-3 to a pack; best-fit decreasing places them longest first "
           "and the room two of them leave is then smaller than any image sample, so only the 10% text-only "
           "samples can fill it. Exact fit instead chooses the samples that close each pack exactly.")


def waste_shape(plan, label: str, max_length: int) -> str:
    """Where a plan's padding is: packs by number of samples, and the mean room each kind leaves."""
    sizes = np.diff(plan.pack_offsets)
    room = max_length - plan.pack_lengths()
    parts = [f"{(sizes == k).sum():,} of {k} (mean room left {room[sizes == k].mean():.0f})"
             for k in range(1, 5) if (sizes == k).any()]
    if (sizes > 4).any():
        parts.append(f"{(sizes > 4).sum():,} of 5 or more (mean room left {room[sizes > 4].mean():.0f})")
    return f"{label}: packs {'; '.join(parts)}; {(room == 0).mean():.1%} of packs exactly full."


def _numba_version() -> str:
    import numba

    return numba.__version__


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="lengths per distribution")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS_packing.md"))
    ap.add_argument("--train", action="store_true", help="also measure training throughput, packed vs padded")
    args = ap.parse_args(argv)
    lines = run(args)
    # ---- training-throughput part (H4): bench/train_throughput.py provides run(args) -> list of markdown lines.
    # Guarded so the fill-rate and speed parts run without it.
    if args.train:
        sys.path.insert(0, HERE)
        try:
            from train_throughput import run as run_training
        except ImportError as exc:
            lines += ["## Training throughput", "", f"not run: {exc}", ""]
        else:
            lines += run_training(args)
    # ---- end of the training-throughput hook
    text = "\n".join(lines)
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
