"""Does the demo's tiny VLM learn the demo task? Train it with a recipe, then score it on new images.

Draws the demo's dirty data (``make_demo_data``, seed ``--seed``), cleans it with the demo's own pipeline, trains
the tiny VLM with :func:`datacopilot.train.demo.train_on_demo` and a recipe (``--recipe quick|full`` and any
field overridden), then draws ``--eval-images`` new images with another seed (``--eval-seed``) and, for each
attribute (shape, colour, position, background), asks the demo's question and ranks every candidate answer by
its log-likelihood under the model (sum over the answer's tokens and the closing marker). Prints per-attribute
accuracy against chance (1 / number of candidates), the same with each image swapped for another's (a
wrong-image control: what the text alone gets), and the time per optimizer step.

Time per step: the median wall seconds of the run's logged steps (the loop times each step) and the process CPU
seconds of the whole run divided by its steps; on a loaded machine the CPU figure divided by the threads paddle
uses estimates a quiet machine's wall time better than the wall time does.

    python bench/vlm_recipe.py --recipe full                     # the demo's full recipe (train.demo.FULL)
    python bench/vlm_recipe.py --recipe quick --steps 100        # the --quick / CI recipe, longer
    python bench/vlm_recipe.py --recipe full --rows 1200 --steps 300 --lr 2e-3 --image-tokens 16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ATTRS = ("shape", "color", "position", "background")


def questions(meta: dict) -> dict[str, tuple[str, list[str], int]]:
    """attribute -> (the demo's question, every answer it can have, index of the true one)."""
    from datacopilot.demo_data import ATTRIBUTES, answer_choices
    from datacopilot.demo_data import questions as demo_questions

    out = {}
    for attr, (q, true) in demo_questions(meta).items():
        choices = answer_choices(attr, meta)
        out[attr] = (q, choices, choices.index(true))
    return {a: out[a] for a in ATTRIBUTES}


def held_out(out_dir: str, n: int, seed: int) -> list[tuple[str, dict]]:
    """(image path, attributes) of ``n`` new drawn images (the rows with an image, one per id)."""
    from datacopilot.demo_data import make_demo_data

    info = make_demo_data(out_dir, n=n + n // 4 + 10, seed=seed)
    seen, out = set(), []
    with open(info["path"], encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            path = os.path.join(out_dir, r["image"])
            if r["id"] in seen or not os.path.isfile(path):
                continue
            seen.add(r["id"])
            out.append((path, r["meta"]))
    return out[:n]


def pixels(path: str, size: int) -> np.ndarray:
    """As the training loader reads an image: RGB, resized, scaled to [-1, 1], [C, H, W]."""
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((size, size))
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def score(model, tpl, items: list[tuple[np.ndarray, str, str]], batch: int = 256) -> np.ndarray:
    """Log-likelihood of each (image, question, answer): sum over the answer's tokens and its closing marker."""
    import paddle

    from datacopilot.models.lm import token_losses

    out = []
    model.eval()
    with paddle.no_grad():
        for a in range(0, len(items), batch):
            part = items[a:a + batch]
            enc = [tpl.encode_messages([{"role": "user", "content": "<image>\n" + q},
                                        {"role": "assistant", "content": ans}], n_images=1) for _, q, ans in part]
            length = max(len(e["input_ids"]) for e in enc)
            ids = np.zeros((len(enc), length), np.int64)
            labels = np.full((len(enc), length), -100, np.int64)
            for i, e in enumerate(enc):
                ids[i, :len(e["input_ids"])] = e["input_ids"]
                labels[i, :len(e["labels"])] = e["labels"]
            mask = np.broadcast_to(np.tril(np.ones((length, length), bool)), (len(enc), 1, length, length))
            t = paddle.to_tensor
            _, logits = model(t(ids), t(np.broadcast_to(np.arange(length), ids.shape).copy()), t(mask.copy()),
                              pixel_values=t(np.stack([p for p, _, _ in part])),
                              image_pack=t(np.arange(len(enc))),
                              image_offset=t(np.array([e["image_offsets"][0] for e in enc])))
            losses, _ = token_losses(logits, t(labels))
            out.append(-losses.sum(axis=1).numpy())
    return np.concatenate(out)


def evaluate(model_dir: str, tok_dir: str, images: list[tuple[str, dict]], shift: int = 0) -> dict:
    """Per attribute, whether the true answer ranks first by log-likelihood, per image; ``shift`` > 0 pairs each
    question with the image ``shift`` places further on (the wrong-image control)."""
    from datacopilot.models.chat_template import ChatTemplate
    from datacopilot.models.tokenizer import load_tokenizer
    from datacopilot.models.vlm import load_vlm

    model = load_vlm(model_dir)
    cfg = model.config
    tpl = ChatTemplate(load_tokenizer(tok_dir), image_token_count=cfg.image_token_count)
    arrays = [pixels(p, cfg.image_size) for p, _ in images]
    items, spans = [], []  # spans: (attribute, first item, number of candidates, true index)
    for k, (_, meta) in enumerate(images):
        px = arrays[(k + shift) % len(arrays)]
        for attr, (q, cands, true) in questions(meta).items():
            spans.append((attr, len(items), len(cands), true))
            items.extend((px, q, c) for c in cands)
    ll = score(model, tpl, items)
    right: dict[str, list[bool]] = {}
    for attr, a, n, true in spans:
        right.setdefault(attr, []).append(int(np.argmax(ll[a:a + n])) == true)
    return {attr: np.array(v) for attr, v in right.items()}


def summary(right: dict, only: list[bool] | None = None) -> dict:
    """Accuracy per attribute, over the images ``only`` marks (all: None)."""
    return {attr: float(v[np.array(only)].mean() if only is not None else v.mean()) for attr, v in right.items()}


def main() -> None:
    from datacopilot.train.demo import FULL, QUICK, Recipe

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", choices=("quick", "full"), default="full")
    ap.add_argument("--rows", type=int, default=400, help="demo rows to draw for training (the demo's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=1000)
    ap.add_argument("--eval-images", type=int, default=200)
    ap.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    for f in dataclasses.fields(Recipe):
        ap.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                        type=(lambda v: v.lower() in ("1", "true", "yes")) if f.type in (bool, "bool") else
                        (float if f.type in (float, "float") else int if f.type in (int, "int") else str))
    a = ap.parse_args()
    recipe = FULL if a.recipe == "full" else QUICK
    recipe = dataclasses.replace(recipe, **{f.name: getattr(a, f.name) for f in dataclasses.fields(Recipe)
                                            if getattr(a, f.name) is not None})
    work = a.work or tempfile.mkdtemp(prefix="vlm-recipe-")
    print(f"recipe: {recipe}\nwork: {work}", flush=True)

    from datacopilot.demo import cleaning_pipeline
    from datacopilot.demo_data import make_demo_data
    from datacopilot.train.demo import train_on_demo

    data = make_demo_data(os.path.join(work, "data"), n=a.rows, seed=a.seed)
    shards = os.path.join(work, "data", "shards")
    res = cleaning_pipeline(data["path"]).write(shards, format="arrow", progress=False)
    print(f"{data['rows']} rows drawn, {res['rows']} kept by the demo's cleaning", flush=True)
    threads = os.environ.get("OMP_NUM_THREADS", "paddle's default")
    marks = []  # (step, process CPU seconds) at each logged step line

    def echo(line: str) -> None:
        m = re.search(r"step (\d+)/", line)
        if m:
            marks.append((int(m.group(1)), time.process_time()))
        print(line, flush=True)

    cpu0, t0 = time.process_time(), time.perf_counter()
    result = train_on_demo(shards, os.path.join(work, "train"), seed=a.seed, recipe=recipe, echo=echo)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    steps = [h["seconds"] for h in result["history"] if h.get("seconds")]
    med = statistics.median(steps)
    (s0, c0), (s1, c1) = marks[0], marks[-1]
    step_cpu = (c1 - c0) / max(1, s1 - s0)
    print(f"\ntrained {recipe.steps} steps: wall {wall:.1f} s for the whole call (tokenizer, model, packing, "
          f"training, saving); per step: median wall {med * 1000:.0f} ms, process CPU {step_cpu * 1000:.0f} ms "
          f"(steps {s0}-{s1}; threads: {threads}); load average now {os.getloadavg()[0]:.1f}", flush=True)
    print(f"estimate on 2 quiet CPUs: {recipe.steps} x {step_cpu:.3f} CPU s = {recipe.steps * step_cpu:.0f} s if "
          f"a step used one core, {recipe.steps * step_cpu / 2:.0f} s if both; setup and saving "
          f"{cpu - recipe.steps * step_cpu:.0f} CPU s; the median wall step under this load: "
          f"{recipe.steps * med:.0f} s")
    images = held_out(os.path.join(work, "eval"), a.eval_images, a.eval_seed)
    tok = result["tokenizer_dir"]
    t1 = time.perf_counter()
    right = evaluate(result["model_dir"], tok, images)
    acc = summary(right)
    ctrl = summary(evaluate(result["model_dir"], tok, images, shift=len(images) // 2 + 1))
    with open(data["path"], encoding="utf-8") as f:  # the attribute combinations drawn for training
        seen = {tuple(json.loads(line)["meta"][k] for k in ATTRS) for line in f}
    new = [tuple(m[k] for k in ATTRS) not in seen for _, m in images]
    fresh = summary(right, new) if any(new) else {}
    print(f"\nheld-out accuracy on {len(images)} new images (seed {a.eval_seed}), log-likelihood ranking "
          f"[{time.perf_counter() - t1:.0f} s]; {sum(new)} of them show a combination of the four attributes "
          f"that no training image shows:")
    print(f"  {'attribute':<11} {'accuracy':>8} {'chance':>7} {'wrong image':>11} {'unseen combos':>13}")
    for attr, r in acc.items():
        print(f"  {attr:<11} {r:>8.3f} {1 / len(questions(images[0][1])[attr][1]):>7.3f} {ctrl[attr]:>11.3f} "
              f"{fresh.get(attr, float('nan')):>13.3f}")
    print(json.dumps({"recipe": dataclasses.asdict(recipe), "seed": a.seed, "eval_seed": a.eval_seed,
                      "accuracy": acc, "wrong_image": ctrl, "unseen_combos": fresh, "n_unseen": sum(new),
                      "median_step_s": med, "cpu_per_step_s": step_cpu, "cpu_s": cpu, "wall_s": wall,
                      "loss": [result["history"][0]["loss"], result["history"][-1]["loss"]]}))


if __name__ == "__main__":
    main()
