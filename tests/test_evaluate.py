"""Evaluation of a trained model on held-out questions (datacopilot.train.evaluate, datacopilot eval): oracles
built from the generator's truth score 1.0, a constant model scores chance, the wrong-image control takes an
image-reading oracle to chance, and a real tiny VLM and LM saved to disk are scored end to end (API and CLI)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from datacopilot.demo_data import ATTRIBUTES, questions
from datacopilot.models.backends import Response
from datacopilot.train.demo_eval import demo_items, heldout_attrs, question_kind, score_synthesized
from datacopilot.train.evaluate import Item, evaluate, format_table, load_items, rank, save_report

CHANCE = {"shape": 1 / 5, "color": 1 / 7, "position": 1 / 5, "background": 1 / 4}


class Oracle:
    """Reads the image (by its bytes, through the generator's truth) and answers as the truth says: the true
    answer scores 0, every other -5; generation writes the true answer."""

    def __init__(self, truth: dict[str, dict]):
        self.truth = truth  # sha256 of the image -> attributes
        self.calls = 0

    def _answer(self, req) -> str:
        attrs = self.truth[hashlib.sha256(req.images[0]).hexdigest()]
        return questions(attrs)[question_kind(req.messages[-1]["content"])][1]

    def loglikelihood(self, requests, targets):
        self.calls += 1
        return [0.0 if t == self._answer(r) else -5.0 for r, t in zip(requests, targets)]

    def generate(self, requests):
        return [Response(self._answer(r), "stop") for r in requests]


class Constant:
    """Every candidate the same score, an empty answer."""

    def loglikelihood(self, requests, targets):
        return [-1.0] * len(targets)

    def generate(self, requests):
        return [Response("", "stop") for _ in requests]


class FirstChoice:
    """Ignores the image: prefers whatever answer comes first among the candidates it is shown."""

    def __init__(self, items):
        self.first = {it.choices[0] for it in items}

    def loglikelihood(self, requests, targets):
        return [0.0 if t in self.first else -1.0 for t in targets]

    def generate(self, requests):
        return [Response("A circle.", "stop") for _ in requests]


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    d = tmp_path_factory.mktemp("heldout")
    n = 300
    items = demo_items(str(d), n=n, seed=0)
    truth = {}
    for i, a in enumerate(heldout_attrs(n, 0)):
        truth[hashlib.sha256((d / f"images/heldout_{i:05d}.png").read_bytes()).hexdigest()] = a
    return d, items, truth


def test_demo_items_ask_every_attribute_with_every_answer(heldout):
    _, items, _ = heldout
    assert len(items) == 300 * len(ATTRIBUTES)
    for it in items[:40]:
        assert it.answer in it.choices and len(it.choices) == round(1 / CHANCE[it.kind])
        assert question_kind(it.question) == it.kind
    # the same attributes draw the same pixels (the generator has 5 * 7 * 5 * 4 combinations, no jitter)
    combos = {tuple(sorted(a.items())) for a in heldout_attrs(300, 0)}
    assert len({it.image for it in items}) == len(combos)


def test_an_oracle_scores_one_and_the_wrong_image_takes_it_to_chance(heldout):
    _, items, truth = heldout
    oracle = Oracle(truth)
    report = evaluate(oracle, items, seed=3)
    assert oracle.calls == 2  # every candidate in one call: the items, then the wrong-image control
    for kind in ATTRIBUTES:
        s = report["kinds"][kind]
        assert s["n"] == 300 and s["accuracy"] == 1.0 and s["exact_match"] == 1.0
        assert s["chance"] == pytest.approx(CHANCE[kind], abs=1e-4)
        assert abs(s["wrong_image"] - CHANCE[kind]) < 0.08, (kind, s)
    assert abs(report["all"]["wrong_image"] - report["all"]["chance"]) < 0.04
    # every item really got another image: the oracle's control picks are the other image's answers
    assert sum(p["wrong_image_pick"] == p["answer"] for p in report["predictions"]) < 0.3 * len(items)


def test_a_constant_model_scores_exactly_chance(heldout):
    _, items, _ = heldout
    report = evaluate(Constant(), items)
    for kind in ATTRIBUTES:
        s = report["kinds"][kind]
        assert s["accuracy"] == pytest.approx(CHANCE[kind], abs=1e-4)
        assert s["wrong_image"] == pytest.approx(CHANCE[kind], abs=1e-4)
        assert s["exact_match"] == 0.0


def test_a_model_that_ignores_the_image_does_not_move_under_the_control(heldout):
    _, items, _ = heldout
    report = evaluate(FirstChoice(items), items, generate=False)
    for kind in ATTRIBUTES:
        s = report["kinds"][kind]
        assert s["accuracy"] == s["wrong_image"] and s["exact_match"] is None
    assert report["kinds"]["shape"]["accuracy"] > 0  # circles are first and some images hold one


def test_ties_share_the_credit_and_a_failed_score_counts_as_wrong():
    items = [Item("a", "k", "q?", "yes", ("yes", "no", "maybe")), Item("b", "k", "q?", "no", ("yes", "no"))]

    class Scorer:
        def loglikelihood(self, requests, targets):
            return [-1.0, -1.0, -3.0, ValueError("too long"), -1.0]

    out = rank(Scorer(), items)
    assert out[0]["credit"] == 0.5 and out[0]["pick"] == "yes"
    assert out[1]["credit"] == 0.0 and "too long" in out[1]["error"]


def test_the_report_is_written_as_json_and_a_png(tmp_path, heldout):
    from PIL import Image

    _, items, truth = heldout
    report = evaluate(Oracle(truth), items[:40])
    files = save_report(report, str(tmp_path / "out"))
    data = json.loads(open(files["json"]).read())
    assert data["kinds"]["color"]["accuracy"] == 1.0 and len(data["predictions"]) == 40
    assert Image.open(files["png"]).size[0] > 100
    table = format_table(report)
    assert table.splitlines()[0].split()[:3] == ["question", "n", "accuracy"]
    assert [ln.split()[0] for ln in table.splitlines()[1:]] == [*ATTRIBUTES, "all"]


def test_items_round_trip_through_their_jsonl(heldout):
    d, items, _ = heldout
    assert load_items(str(d / "eval.jsonl")) == items


# -- synthesized rows against the truth -----------------------------------------------------------------------
def test_synthesized_pairs_and_captions_are_checked_against_the_image():
    meta = {"shape": "circle", "color": "red", "position": "left", "background": "white"}
    row = {"id": "x", "meta": meta, "caption": "A blue circle on the left of a white background.",
           "conversations": [
               {"from": "human", "value": "<image>\nWhat shape is in the image?"},
               {"from": "gpt", "value": "A circle."},
               {"from": "human", "value": "What color is the circle?"}, {"from": "gpt", "value": "It is red."},
               {"from": "human", "value": "Where is it?"}, {"from": "gpt", "value": "At the top."},
               {"from": "human", "value": "What colour is the background?"}, {"from": "gpt", "value": "Nice."},
               {"from": "human", "value": "How many?"}, {"from": "gpt", "value": "One."}]}
    s = score_synthesized([row, {"id": "y", "meta": None, "conversations": []}], skip_pairs=lambda r: 1)
    assert s["rows"] == 2 and s["rows_without_truth"] == 1
    assert s["pairs"]["shape"]["n"] == 0  # the first pair was in the row before synthesis
    assert s["pairs"]["color"] == {"n": 1, "correct": 1, "wrong": 0, "unscorable": 0, "accuracy": 1.0}
    assert s["pairs"]["position"]["wrong"] == 1 and s["pairs"]["background"]["unscorable"] == 1
    assert s["pairs"]["other"]["n"] == 1
    caps = s["captions"]
    assert caps["color"]["wrong"] == 1 and caps["shape"]["correct"] == 1 and caps["background"]["correct"] == 1
    assert caps["position"]["correct"] == 1


def test_the_generators_own_rows_are_all_correct(tmp_path):
    from datacopilot.demo_data import make_demo_data

    with open(make_demo_data(str(tmp_path), n=40, seed=2)["path"]) as fh:
        rows = [json.loads(line) for line in fh]  # the dirty rows too: an empty answer is unscorable, not wrong
    s = score_synthesized(rows)
    assert s["rows_without_truth"] == 0 and s["pairs"]["other"]["n"] == 0
    assert sum(p["n"] for p in s["pairs"].values()) > 20 and sum(c["n"] for c in s["captions"].values()) > 0
    for kind in ATTRIBUTES:
        assert s["pairs"][kind]["wrong"] == 0 and s["captions"][kind]["wrong"] == 0
    # answers with a removed (empty) value are unscorable, never correct
    assert all(p["correct"] + p["unscorable"] == p["n"] for k, p in s["pairs"].items() if k != "other")


# -- real models, saved and loaded through the user-facing path ---------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    pytest.importorskip("paddlenlp")
    from datacopilot.demo_data import caption
    from datacopilot.models.lm import build_tiny_lm
    from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer
    from datacopilot.models.vlm import build_tiny_vlm

    d = tmp_path_factory.mktemp("eval_models")
    texts = []
    for a in heldout_attrs(60, 9):
        texts += [t for qa in questions(a).values() for t in qa] + [caption(**a)]
    tok_dir = train_tokenizer(texts, str(d / "vlm" / "tokenizer"), vocab_size=320)
    vocab = len(load_tokenizer(tok_dir))
    vlm = build_tiny_vlm(str(d / "vlm"), vocab, image_token_count=4, image_size=16, hidden=32, layers=1, heads=2,
                         vision_hidden=16, max_position=256, init_std=0.125)
    lm = build_tiny_lm(str(d / "lm"), vocab, hidden=32, layers=1, heads=2, max_position=256, init_std=0.125)
    train_tokenizer(texts, str(d / "lm" / "tokenizer"), vocab_size=320)
    return vlm, lm


def test_a_tiny_vlm_is_ranked_one_forward_pass_per_batch_of_candidates(tiny_models, tmp_path):
    from datacopilot.train.evaluate import model_scorer

    items = demo_items(str(tmp_path), n=4, seed=1)
    scorer = model_scorer(tiny_models[0], batch_size=32)
    out = rank(scorer, items)
    rows = sum(len(it.choices) for it in items)
    assert rows == 4 * (5 + 7 + 5 + 4)
    assert scorer.model_calls == math.ceil(rows / 32)
    assert all(o["error"] is None and len(o["scores"]) == len(it.choices) for o, it in zip(out, items))
    assert all(s <= 0 for o in out for s in o["scores"])


def test_a_tiny_vlm_evaluated_end_to_end(tiny_models, tmp_path):
    from datacopilot.train.evaluate import evaluate_model

    lines = []
    report = evaluate_model(tiny_models[0], demo_items(str(tmp_path / "h"), n=4, seed=2), str(tmp_path / "e"),
                            echo=lines.append)
    for kind in ATTRIBUTES:
        s = report["kinds"][kind]
        assert s["n"] == 4 and s["errors"] == 0 and 0 <= s["accuracy"] <= 1 and s["wrong_image"] is not None
        assert s["exact_match"] == 0.0  # a random model does not write "It is red."
    assert all(isinstance(p["generated"], str) for p in report["predictions"])
    assert (tmp_path / "e" / "eval.json").is_file() and (tmp_path / "e" / "eval.png").is_file()
    assert "accuracy" in lines[0] and "wrong image" in lines[0]


def test_a_causal_lm_is_evaluated_on_text_questions_without_a_control(tiny_models):
    from datacopilot.train.evaluate import evaluate_model

    items = [Item(f"q{i}", "colour", f"Is the sky {c}?", "Yes.", ("Yes.", "No.")) for i, c in
             enumerate(("red", "blue"))]
    report = evaluate_model(tiny_models[1], items, echo=lambda _: None)
    s = report["kinds"]["colour"]
    assert s["n"] == 2 and s["wrong_image"] is None and s["chance"] == 0.5 and s["errors"] == 0


def test_the_eval_command_draws_a_heldout_set_and_scores_a_saved_vlm(tiny_models, tmp_path):
    from click.testing import CliRunner

    from datacopilot.cli import main

    out = tmp_path / "ev"
    res = CliRunner().invoke(main, ["eval", tiny_models[0], "--rows", "3", "--out", str(out), "--no-generate"])
    assert res.exit_code == 0, res.output
    assert "12 questions about 3 new demo images" in res.output
    first = json.loads((out / "eval.json").read_text())
    assert sorted(first["kinds"]) == sorted(ATTRIBUTES) and first["kinds"]["shape"]["exact_match"] is None
    # the drawn set reruns from its jsonl, with the same scores
    again = CliRunner().invoke(main, ["eval", tiny_models[0], str(out / "heldout" / "eval.jsonl"), "--out",
                                      str(tmp_path / "ev2"), "--no-generate"])
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "ev2" / "eval.json").read_text())
    flat = [[s for p in r["predictions"] for s in p["scores"]] for r in (first, second)]
    assert len(flat[0]) == 3 * 21 and flat[1] == pytest.approx(flat[0], abs=1e-4)
    bad = CliRunner().invoke(main, ["eval", str(tmp_path), "--rows", "2", "--out", str(tmp_path / "ev3")])
    assert bad.exit_code == 2 and "error:" in bad.output


def test_the_demo_evaluates_its_model_on_new_images(tmp_path):
    pytest.importorskip("paddlenlp")
    from datacopilot.demo import run_demo

    lines: list[str] = []
    report = run_demo(str(tmp_path), n=40, seed=1, echo=lines.append, train_steps=2, synth_rows=4, eval_rows=3)
    ev = report["eval"]
    assert sorted(ev["kinds"]) == sorted(ATTRIBUTES) and ev["all"]["n"] == 12
    assert ev["files"]["png"].startswith(str(tmp_path)) and (tmp_path / "eval" / "eval.json").is_file()
    text = "\n".join(lines)
    assert "5. evaluating the VLM on new images" in text and "wrong image" in text
    assert report["synth"]["truth"]["rows"] == 4 and "checked against what was drawn" in text
