"""caption: a tiny random VLM loaded from its directory (local and Ray), a rule-based model behind a real
OpenAI-compatible server (captions that can be checked), turns, rejections, failures, the cache."""

from __future__ import annotations

import pytest

import datacopilot as dc
from datacopilot.errors import OperatorError
from datacopilot.operators import create

from ..executors._ray import executor, ray_session  # noqa: F401
from ._models import image_color, image_rows, rule_server, tiny_vlm  # noqa: F401


def dataset(tmp_path, n=6, **kw):
    return dc.MMDataset.from_rows(image_rows(tmp_path, n, **kw), schema="MM", root=str(tmp_path))


def run(ds, op, executor, on_error="raise"):
    """The operator over ``ds`` as a pipeline on ``executor``: (rows, the operator's record)."""
    out = dc.pipeline(ds, on_error=on_error).apply(op).collect(executor=executor)
    return out, out.history()[-1]


def test_tiny_vlm_captions_every_image_on_both_executors(tmp_path, tiny_vlm, executor):
    ds = dataset(tmp_path)
    spec = {"backend": "paddle", "path": tiny_vlm, "max_new_tokens": 6, "batch_size": 4}
    out, rec = run(ds, create("caption", model=spec), executor)
    assert len(out) == len(ds) and rec.rows_in == rec.rows_out == 6
    assert sum(v for k, v in rec.counts.items() if k == "generated" or k.startswith("rejected")) == 6
    captions = [r["caption"] for r in out]
    # a random model: what it says is arbitrary, but accounted for: generated rows carry a caption
    assert sum(c is not None for c in captions) == rec.counts.get("generated", 0)
    local, _ = run(ds, create("caption", model=spec), "local")
    assert captions == [r["caption"] for r in local]          # same greedy outputs on Ray and locally


def answer_color(req):
    return f"A solid {image_color(req.images[0])} square." if req.images else ""


def test_rule_model_captions_and_turns(tmp_path):
    ds = dataset(tmp_path)
    with rule_server(answer_color) as (spec, model):
        out = ds.apply(create("caption", model=spec))
        assert [r["caption"] for r in out] == [f"A solid {c} square." for c in
                                               ["red", "green", "blue", "white", "black", "yellow"]]
        assert out.history()[-1].counts == {"generated": 6}
        turned = ds.apply(create("caption", model=spec, to="turn", prompt="Describe it."))
    conv = turned[1]["conversations"]
    assert [t["from"] for t in conv] == ["human", "gpt", "human", "gpt"]
    assert conv[2]["value"] == "Describe it."                # the conversation already has its <image>
    assert conv[3]["value"] == "A solid green square."
    turned.validate()


def test_turn_without_conversation_gets_the_placeholder(tmp_path):
    ds = dataset(tmp_path, 2, with_conversation=False)
    with rule_server(answer_color) as (spec, _):
        out = ds.apply(create("caption", model=spec, to="turn"))
    assert out[0]["conversations"][0]["value"].startswith("<image>\n")
    out.validate()


def test_rejected_skipped_and_failed_rows_are_accounted(tmp_path):
    rows = image_rows(tmp_path, 6)
    rows[1]["image"] = None                                   # nothing to caption: skipped
    rows[2]["image"] = "img/missing.png"                      # cannot be read: the row fails
    ds = dc.MMDataset.from_rows(rows, schema="MM", root=str(tmp_path))

    def answer(req):
        color = image_color(req.images[0])
        return "" if color == "white" else ("<image> bad" if color == "black" else color)

    with rule_server(answer) as (spec, model):
        out = ds.apply(create("caption", model=spec), on_error="quarantine")
        rec = out.history()[-1]
        assert rec.counts == {"generated": 2, "skipped: no image": 1, "rejected: empty output": 1,
                              "rejected: placeholder in output": 1}
        assert rec.failed == 1 and rec.rows_out == 5 and len(out.quarantine) == 1
        assert "missing.png" in out.quarantine[0]["_error"]
        assert [r["caption"] for r in out] == ["red", None, None, None, "yellow"]
        calls = model.calls
        assert calls == 4                                    # the row-by-row retry asked the model nothing new
        strict = ds.apply(create("caption", model=spec, on_reject="fail"), on_error="skip").history()[-1]
        assert strict.failed == 3 and strict.counts == {"generated": 2, "skipped: no image": 1}
        with pytest.raises(OperatorError, match="rejected: empty output"):
            ds[3:4].apply(create("caption", model=spec, on_reject="fail"))


def test_cache_dir_means_a_rerun_makes_no_calls(tmp_path):
    ds = dataset(tmp_path, 4)
    with rule_server(answer_color) as (spec, model):
        op = create("caption", model=spec, cache_dir=str(tmp_path / "cache"))
        first = ds.apply(op)
        n = model.calls
        second = ds.apply(create("caption", model=spec, cache_dir=str(tmp_path / "cache")))
        assert n == 4 and model.calls == 4
    assert [r["caption"] for r in first] == [r["caption"] for r in second]


def test_bad_parameters_are_refused_at_construction(tmp_path):
    with pytest.raises(OperatorError, match="model directory"):
        create("caption", model={"backend": "paddle", "path": str(tmp_path / "nope")})
    with pytest.raises(OperatorError, match="`model`"):
        create("caption", model={"backend": "paddle", "path": str(tmp_path), "bogus": 1})
    with pytest.raises(OperatorError, match="`to`"):
        create("caption", model={"backend": "openai", "endpoint": "http://127.0.0.1:9/v1"}, to="nowhere")
    with pytest.raises(OperatorError, match="unknown field"):
        create("caption", model={"backend": "openai", "endpoint": "http://127.0.0.1:9/v1"}, prompt="{x}")


def test_a_yaml_pipeline_with_a_model_operator_runs_from_its_own_folder(tmp_path, tiny_vlm):
    import shutil

    import yaml

    from datacopilot.pipeline import Pipeline

    rows = image_rows(tmp_path, 3)
    dc.MMDataset.from_rows(rows, schema="MM", root=str(tmp_path)).write(str(tmp_path / "data.jsonl"))
    shutil.copytree(tiny_vlm, tmp_path / "models" / "vlm")
    spec = {"source": {"paths": ["data.jsonl"], "schema": "MM"},
            "ops": [{"name": "caption", "model": {"backend": "paddle", "path": "models/vlm", "max_new_tokens": 4},
                     "cache_dir": "cache"}],
            "output": {"dir": "out"}}
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump(spec))
    pipe = Pipeline.from_yaml(str(tmp_path / "pipe.yaml"))
    assert pipe.ops[0].p["model"]["path"] == str(tmp_path / "models" / "vlm")
    assert pipe.ops[0].p["cache_dir"] == str(tmp_path / "cache")
    report = pipe.write(progress=False)
    assert report["rows"] == 3 and sum(report["ops"][0]["counts"].values()) == 3
    again = Pipeline.from_spec(pipe.to_spec())                 # the spec round-trips with the model as data
    assert again.ops[0].params() == pipe.ops[0].params()


def test_a_model_asking_for_gpus_is_refused_on_a_ray_cluster_without_them(tmp_path, ray_session):
    ds = dataset(tmp_path, 2)
    op = create("caption", model={"backend": "openai", "endpoint": "http://127.0.0.1:9/v1", "num_gpus": 1})
    assert op.resources()["num_gpus"] == 1
    with pytest.raises(dc.errors.DataCopilotError, match="asks for 1 GPU"):
        dc.pipeline(ds).apply(op).collect(executor="ray")
