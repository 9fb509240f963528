"""Shared data for the operator tests: LLaVA-style rows (MM) and their MESSAGES form."""

import pytest

import datacopilot as dc


def mm(id, *turns, image="img/0.png"):
    """An MM row; turns alternate human / gpt unless given as (role, text) pairs."""
    conv = []
    for k, t in enumerate(turns):
        role, text = t if isinstance(t, tuple) else ("human" if k % 2 == 0 else "gpt", t)
        conv.append({"from": role, "value": text})
    return {"id": id, "image": image, "conversations": conv}


def ids(ds) -> list:
    return [r["id"] for r in ds]


def last(ds):
    """The history record of the last operator."""
    return ds.history()[-1]


@pytest.fixture
def to_schema():
    """Build a dataset from MM rows in MM or MESSAGES form."""
    def build(rows, schema="MM", root=None):
        ds = dc.MMDataset.from_rows(rows, schema="MM", root=root)
        return ds if schema == "MM" else ds.convert(schema)
    return build
