"""The demo's synthesis step: the VLM the demo trained captions and generates VQA for curated rows through the
registered model operators, and every row is accounted for (generated, rejected with a reason, skipped, failed)."""

from __future__ import annotations

import pytest

import datacopilot as dc

pytest.importorskip("paddlenlp")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from datacopilot.demo import run_demo

    out = tmp_path_factory.mktemp("demo_synth")
    lines: list[str] = []
    report = run_demo(str(out), n=60, seed=2, echo=lines.append, train_steps=4, synth_rows=10)
    return out, report, "\n".join(lines)


def test_synthesis_accounts_for_every_row(demo):
    out, report, text = demo
    synth = report["synth"]
    assert [o["op"] for o in synth["ops"]] == ["caption", "generate_vqa"]
    for o in synth["ops"]:
        counted = sum(v for k, v in o["counts"].items() if k == "generated" or k.startswith(("rejected",
                                                                                             "skipped")))
        assert counted + o["failed"] == o["rows_in"] == 10, o
        assert o["rows_out"] + o["failed"] == o["rows_in"]
    assert synth["rows"] + synth["quarantined"] == 10
    written = dc.load(str(out / "synth"))
    assert len(written) == synth["rows"] and "caption" in written.columns
    assert "6. synthesis with the VLM just trained" in text and "generate_vqa" in text
    assert synth["truth"]["rows"] == synth["rows"] and synth["truth"]["rows_without_truth"] == 0


def test_captions_written_are_the_generated_ones(demo):
    out, report, _ = demo
    caption = report["synth"]["ops"][0]["counts"]
    written = dc.load(str(out / "synth"))
    assert sum(bool(r["caption"]) for r in written) == caption.get("generated", 0)
