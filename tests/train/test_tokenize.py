"""tokenize_dataset: the tokenized columns, drops with reasons, process mode, and the Arrow IPC cache."""

import pytest

pytest.importorskip("paddlenlp")
pytest.importorskip("sentencepiece")

import pyarrow as pa  # noqa: E402

from datacopilot import MMDataset  # noqa: E402
from datacopilot.errors import OperatorError  # noqa: E402
from datacopilot.models.chat_template import IGNORE, ChatTemplate  # noqa: E402
from datacopilot.models.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from datacopilot.train.tokenize import cache_files, tokenize_dataset  # noqa: E402

N_IMG = 4


def conv(i, answer="A red circle.", question="<image>\nWhat shape is in the image?"):
    return {"id": f"r{i}", "image": f"img/{i}.png",
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


ROWS = [conv(i, answer=f"A red circle number {i}.") for i in range(40)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [t["value"] for r in ROWS for t in r["conversations"]]
    return load_tokenizer(train_tokenizer(texts, str(tmp_path_factory.mktemp("tok")), vocab_size=400))


class CountingTemplate(ChatTemplate):
    """The real template, counting how many rows it encodes."""

    calls = 0

    def encode(self, row, schema):
        type(self).calls += 1
        return super().encode(row, schema)


def test_columns_match_the_template(tok):
    tpl = ChatTemplate(tok, image_token_count=N_IMG)
    ds = MMDataset.from_rows(ROWS, schema="MM")
    out = tokenize_dataset(ds, tpl, max_length=256, num_workers=2)
    t = out.to_arrow()
    assert out.columns[:4] == ds.columns and len(out) == len(ROWS)
    assert t.schema.field("input_ids").type == pa.list_(pa.int32())
    assert t.schema.field("length").type == pa.int32()
    for i in (0, 17, 39):
        enc = tpl.encode(ROWS[i], "MM")
        assert t["input_ids"][i].as_py() == enc["input_ids"]
        assert t["labels"][i].as_py() == enc["labels"]
        assert t["image_offsets"][i].as_py() == enc["image_offsets"] == [2]
        assert t["length"][i].as_py() == len(enc["input_ids"])


def test_rows_that_cannot_be_trained_on_are_dropped_with_reasons(tok):
    tpl = ChatTemplate(tok, image_token_count=N_IMG)
    long_text = "What shape is in the image? " * 20
    rows = [conv(0), conv(1, question=long_text + "<image>"),  # image past max_length: dropped
            conv(2, answer=long_text),  # long but the image fits: kept at full length (the packer cuts it)
            {"id": "r3", "image": None, "conversations": [{"from": "human", "value": "hi"}]},  # nothing to learn
            conv(4, question="<image>" + long_text)]  # its answer starts past max_length: nothing to learn
    out = tokenize_dataset(MMDataset.from_rows(rows, schema="MM"), tpl, max_length=40)
    assert out.to_arrow()["id"].to_pylist() == ["r0", "r2"]
    assert out.to_arrow()["length"][1].as_py() > 40
    rec = out.history()[-1]
    assert rec.dropped == {"image tokens cut by max_length": 1, "no assistant tokens within max_length": 2}
    assert rec.rows_in == 5 and rec.rows_out == 2


def test_a_row_that_does_not_encode_is_named_or_counted(tok):
    tpl = ChatTemplate(tok, image_token_count=N_IMG)
    bad = {"id": "bad-7", "image": None, "conversations": [{"from": "human", "value": "<image> hi"},
                                                           {"from": "gpt", "value": "yo"}]}
    ds = MMDataset.from_rows([conv(0), bad], schema="MM")
    with pytest.raises(OperatorError, match="tokenize at row 1 \\(id 'bad-7'\\).*placeholder"):
        tokenize_dataset(ds, tpl, max_length=64, num_workers=1)
    out = tokenize_dataset(ds, tpl, max_length=64, on_error="skip")
    assert len(out) == 1 and out.history()[-1].dropped == {"cannot encode": 1}


def test_process_mode_gives_the_same_columns(tok):
    tpl = ChatTemplate(tok, image_token_count=N_IMG)
    ds = MMDataset.from_rows(ROWS, schema="MM")
    a = tokenize_dataset(ds, tpl, 128, num_workers=2, mode="thread", batch_size=7).to_arrow()
    b = tokenize_dataset(ds, tpl, 128, num_workers=2, mode="process", batch_size=7).to_arrow()
    assert a.select(["input_ids", "labels", "length", "image_offsets"]).equals(
        b.select(["input_ids", "labels", "length", "image_offsets"]))


def test_second_call_reads_the_cache_and_does_not_tokenize(tok, tmp_path):
    tpl = CountingTemplate(tok, image_token_count=N_IMG)
    ds = MMDataset.from_rows(ROWS, schema="MM")
    CountingTemplate.calls = 0
    first = tokenize_dataset(ds, tpl, 128, cache_dir=str(tmp_path))
    assert CountingTemplate.calls == len(ROWS) and len(cache_files(str(tmp_path))) == 1
    # a later run: the same rows loaded again, a fresh template over the same tokenizer
    again = MMDataset.from_rows(ROWS, schema="MM")
    second = tokenize_dataset(again, CountingTemplate(tok, image_token_count=N_IMG), 128, cache_dir=str(tmp_path))
    assert CountingTemplate.calls == len(ROWS)  # nothing encoded the second time
    assert second.history()[-1].op == "tokenize (cached)"
    assert second.to_arrow().equals(first.to_arrow())
    # any change of data, template settings or max_length is a new key
    tokenize_dataset(ds, tpl, 64, cache_dir=str(tmp_path))
    tokenize_dataset(ds, CountingTemplate(tok, image_token_count=N_IMG + 1), 128, cache_dir=str(tmp_path))
    tokenize_dataset(ds[:39], tpl, 128, cache_dir=str(tmp_path))
    assert CountingTemplate.calls == len(ROWS) * 3 + 39
    assert len(cache_files(str(tmp_path))) == 4


def test_a_damaged_cache_file_is_recomputed(tok, tmp_path):
    tpl = CountingTemplate(tok, image_token_count=N_IMG)
    ds = MMDataset.from_rows(ROWS[:5], schema="MM")
    tokenize_dataset(ds, tpl, 128, cache_dir=str(tmp_path))
    (path,) = cache_files(str(tmp_path))
    with open(path, "wb") as f:
        f.write(b"not arrow")
    CountingTemplate.calls = 0
    out = tokenize_dataset(ds, tpl, 128, cache_dir=str(tmp_path))
    assert CountingTemplate.calls == 5 and len(out) == 5
    assert [r["labels"][:1] for r in out] == [[IGNORE]] * 5
