"""The operator registry: registration, collisions, lookup by name, the listing for `datacopilot ops`."""

import json

import pytest

from datacopilot.errors import DataCopilotError, OperatorError
from datacopilot.operators import Filter, Mapper, create, get_operator, list_operators, register, unregister

BUILTINS = {
    "clean_unicode": "mapper", "clean_whitespace": "mapper", "mask_pii": "mapper", "fix_image_tokens": "mapper",
    "fix_roles": "mapper", "filter_image_tokens": "filter", "filter_turns": "filter", "filter_length": "filter",
    "filter_empty_turns": "filter", "filter_refusals": "filter", "filter_repetition": "filter",
    "filter_special_chars": "filter", "filter_language": "filter", "filter_tokens": "filter",
    "filter_image_exists": "filter", "filter_image_size": "filter", "filter_aspect_ratio": "filter",
    "filter_file_size": "filter", "filter_blur": "filter",
}


def test_builtins_are_registered_with_their_kind():
    listed = {o["name"]: o for o in list_operators()}
    for name, kind in BUILTINS.items():
        assert listed[name]["kind"] == kind, name
        assert listed[name]["doc"], f"{name} has no docstring"
    assert [o["name"] for o in list_operators(kind="mapper")] == sorted(
        n for n, o in listed.items() if o["kind"] == "mapper")


def test_listing_gives_parameters_from_the_signature_and_is_json():
    turns = next(o for o in list_operators() if o["name"] == "filter_turns")
    assert turns["parameters"] == [{"name": "min_turns", "default": 2, "type": "int"},
                                   {"name": "max_turns", "default": None, "type": "int | None"}]
    assert turns["reads"] == ["conversations|messages"]
    json.dumps(list_operators())  # serializable as it is


def test_create_by_name_validates_and_round_trips_through_params():
    op = create("filter_length", role="user", min_length=3)
    assert type(op) is get_operator("filter_length")
    assert create(op.name, **op.params()).params() == op.params()
    with pytest.raises(OperatorError, match=r"filter_length: `unit` must be one of 'chars', 'words', got 'lines'"):
        create("filter_length", unit="lines")
    with pytest.raises(TypeError):
        create("filter_turns", min_turn=2)  # a misspelt parameter is not silently ignored


def test_unknown_name_lists_what_exists():
    with pytest.raises(DataCopilotError, match=r"unknown operator 'filter_nothing'; registered: .*filter_turns"):
        get_operator("filter_nothing")


def test_user_operators_register_and_collisions_name_both_classes():
    @register
    class Mine(Filter):
        name = "test_registry_mine"

        def keep(self, batch):
            return [True] * batch.num_rows

    try:
        assert create("test_registry_mine").kind == "filter"
        with pytest.raises(DataCopilotError, match=r"'test_registry_mine' is taken by .*Mine; cannot register "
                                                   r".*Other"):
            @register
            class Other(Mapper):
                name = "test_registry_mine"
        with pytest.raises(DataCopilotError, match="is taken by .*FilterTurns"):
            @register
            class Turns2(Filter):
                name = "filter_turns"
        assert get_operator("filter_turns").__name__ == "FilterTurns"
    finally:
        unregister("test_registry_mine")


def test_register_refuses_nameless_or_non_operators():
    with pytest.raises(DataCopilotError, match="needs a non-empty class attribute `name`"):
        register(type("Nameless", (Filter,), {}))
    with pytest.raises(DataCopilotError, match="takes an Operator subclass"):
        register(dict)
