"""Mixing datasets by ratio (deterministic under a seed) and the SFT config's checks."""

import numpy as np
import pytest

from datacopilot import MMDataset
from datacopilot.errors import InputError
from datacopilot.train import SFTConfig, mix, mix_counts, mix_indices, lr_at


def _captions(n, tag):
    return MMDataset.from_rows([{"id": f"{tag}{i}", "image": None, "caption": f"{tag} caption {i}"}
                                for i in range(n)], schema="CAPTION")


def _vqa(n):
    return MMDataset.from_rows([{"id": f"v{i}", "conversations": [{"from": "human", "value": f"q{i}?"},
                                                                   {"from": "gpt", "value": f"a{i}"}]}
                                for i in range(n)], schema="MM")


def test_counts_hold_the_ratio_exactly():
    assert mix_counts([1000, 1000], [0.7, 0.3], n=100) == [70, 30]
    assert sum(mix_counts([50, 50, 50], [1, 1, 1], n=100)) == 100
    assert mix_counts([1000, 100], [0.7, 0.3]) == [233, 100]  # as many as possible without repeats


def test_indices_are_deterministic_and_seed_dependent():
    a = mix_indices([100, 40], [0.7, 0.3], seed=3, n=50)
    b = mix_indices([100, 40], [0.7, 0.3], seed=3, n=50)
    c = mix_indices([100, 40], [0.7, 0.3], seed=4, n=50)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    src, row = a
    assert np.bincount(src).tolist() == [35, 15]
    for i, size in enumerate([100, 40]):  # no repeats while a dataset has enough rows
        picked = row[src == i]
        assert len(set(picked.tolist())) == len(picked) and picked.max() < size


def test_upsampling_repeats_whole_dataset_before_any_row_twice():
    src, row = mix_indices([10, 3], [0.5, 0.5], seed=0, n=20)
    small = np.bincount(row[src == 1], minlength=3)
    assert small.sum() == 10 and small.max() - small.min() <= 1  # 3 full passes + 1 extra row


def test_mix_datasets_of_different_schemas():
    caps, vqa = _captions(100, "c"), _vqa(60)
    mixed = mix([(caps, 0.7), (vqa, 0.3)], seed=0, n=50)
    again = mix([(caps, 0.7), (vqa, 0.3)], seed=0, n=50)
    assert mixed.schema.name == "MESSAGES" and len(mixed) == 50
    ids = [r["id"] for r in mixed]
    assert ids == [r["id"] for r in again]
    assert sum(i.startswith("c") for i in ids) == 35 and sum(i.startswith("v") for i in ids) == 15
    assert ids != sorted(ids, key=lambda s: s[0])  # shuffled together, not one block after the other


def test_mix_rejects_bad_input():
    with pytest.raises(InputError, match="ratios\\[1\\]"):
        mix_counts([10, 10], [1, 0])
    with pytest.raises(InputError, match="empty"):
        mix_counts([10, 0], [1, 1])
    with pytest.raises(InputError, match="parts\\[0\\]"):
        mix([("not a dataset", 1.0)])


# -- config --------------------------------------------------------------------------------------------
BASE = {"data": "d.jsonl", "model": "m", "tokenizer": "t", "output_dir": "o"}


@pytest.mark.parametrize("extra, message", [
    ({"lrr": 1e-3}, "lrr: unknown config key \\(did you mean 'lr'\\?\\)"),
    ({"lr": "fast"}, "lr: expected a positive number, got 'fast'"),
    ({"batch_size": 0}, "batch_size: expected an integer >= 1, got 0"),
    ({"precision": "int8"}, "precision: expected one of 'fp32', 'bf16', 'fp16', got 'int8'"),
    ({"data": [{"path": "a", "ratio": 0.5}, {"path": "b"}]}, "data\\[1\\].ratio"),
    ({"data": [{"path": "a", "weight": 1}]}, "data\\[0\\]: unknown key"),
    ({"lora": {"rank": 4}}, "lora.rank: unknown key"),
    ({"warmup_steps": 20, "max_steps": 10}, "warmup_steps: expected at most max_steps"),
    ({"model": None}, "model: required key is missing"),
])
def test_config_errors_name_the_key(extra, message):
    with pytest.raises(InputError, match=message):
        SFTConfig.from_dict({**BASE, **extra})


def test_config_from_yaml_resolves_paths_and_reads_3e_4(tmp_path):
    p = tmp_path / "sft.yaml"
    p.write_text("data:\n  - {path: caps/, ratio: 0.7}\n  - {path: vqa.jsonl, ratio: 0.3}\nmodel: m\n"
                 "tokenizer: t\noutput_dir: out\nlr: 3e-4\nlora: {r: 4}\n")
    cfg = SFTConfig.from_yaml(str(p))
    assert cfg.lr == pytest.approx(3e-4)
    assert cfg.data == [(str(tmp_path) + "/caps/", 0.7), (str(tmp_path / "vqa.jsonl"), 0.3)]
    assert cfg.output_dir == str(tmp_path / "out")
    assert cfg.lora["r"] == 4 and cfg.lora["target_modules"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [a\nmodel: m\n")
    with pytest.raises(InputError, match="bad.yaml:\\d+: not valid yaml"):
        SFTConfig.from_yaml(str(bad))


def test_lr_schedule_warmup_then_decay():
    lrs = [lr_at(s, 1e-3, warmup_steps=4, max_steps=20, decay="cosine") for s in range(20)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 1e-4
    lin = [lr_at(s, 1.0, 0, 4, "linear") for s in range(4)]
    assert lin == pytest.approx([1.0, 0.75, 0.5, 0.25])
