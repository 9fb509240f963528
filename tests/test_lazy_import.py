"""``import datacopilot`` is lazy (PEP 562): importing the package, a kernel or the schemas loads no engine module
(dataset, pipeline, io, executors, operators, models) and no optional heavy dependency, and every public name still
resolves on first access."""

import importlib
import json
import subprocess
import sys
import types

import pytest

import datacopilot
import datacopilot.kernels

ENGINE = ("datacopilot.dataset", "datacopilot.pipeline", "datacopilot.io", "datacopilot.executors",
          "datacopilot.engine", "datacopilot.operators", "datacopilot.models", "datacopilot.loading",
          "datacopilot.transforms")
HEAVY = ("paddle", "ray", "torch", "polars", "PIL")


def loaded_after(statement: str, tmp_path) -> tuple[set[str], set[str]]:
    """The datacopilot modules and the heavy third-party packages a fresh interpreter has loaded after
    ``statement``."""
    code = (f"{statement}\nimport sys, json\n"
            f"print(json.dumps([sorted(m for m in sys.modules if m.split('.')[0] == 'datacopilot'),"
            f" sorted(m for m in {HEAVY!r} if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path)
    ours, heavy = json.loads(out.stdout.splitlines()[-1])
    return set(ours), set(heavy)


def engine_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == e or m.startswith(e + ".") for e in ENGINE)}


def test_import_datacopilot_loads_only_the_package(tmp_path):
    ours, heavy = loaded_after("import datacopilot", tmp_path)
    assert ours == {"datacopilot"}
    assert heavy == set()


@pytest.mark.parametrize("module", ["hashing", "minhash", "ngrams", "phash", "grouping", "packing", "masks", "stream"])
def test_a_kernel_loads_no_engine_module(module, tmp_path):
    ours, heavy = loaded_after(f"import datacopilot.kernels.{module}", tmp_path)
    assert engine_modules(ours) == set()
    assert ours <= {"datacopilot", "datacopilot.errors"} | {m for m in ours if m.startswith("datacopilot.kernels")}
    assert heavy == set()


def test_the_hashing_kernel_loads_neither_the_other_kernels_nor_numba(tmp_path):
    ours, _ = loaded_after("import datacopilot.kernels.hashing, sys; assert 'numba' not in sys.modules", tmp_path)
    assert ours == {"datacopilot", "datacopilot.kernels", "datacopilot.kernels.hashing"}


def test_the_schemas_load_no_engine_module(tmp_path):
    ours, heavy = loaded_after("import datacopilot.schemas", tmp_path)
    assert engine_modules(ours) == set()
    assert ours <= {"datacopilot", "datacopilot.errors"} | {m for m in ours if m.startswith("datacopilot.schemas")}
    assert heavy == set()


def test_a_public_name_loads_its_module_on_first_access(tmp_path):
    ours, _ = loaded_after("import datacopilot as dc\nassert dc.MM.name == 'MM'", tmp_path)
    assert engine_modules(ours) == set()
    ours, _ = loaded_after("import datacopilot as dc\ndc.load", tmp_path)
    assert "datacopilot.api" in ours


def test_every_public_name_resolves_in_a_fresh_interpreter(tmp_path):
    code = ("import datacopilot as dc\n"
            "from datacopilot import *\n"
            "missing = [n for n in dc.__all__ if n not in globals() or globals()[n] is not getattr(dc, n)]\n"
            "assert not missing, missing\n"
            "from datacopilot.kernels import *\n"
            "import datacopilot.kernels as k\n"
            "assert all(globals()[n] is getattr(k, n) for n in k.__all__)")
    loaded_after(code, tmp_path)


@pytest.mark.parametrize("name", datacopilot.__all__)
def test_a_public_name_is_the_object_its_module_defines(name):
    modules = [importlib.import_module(f"datacopilot.{m}") for m in ("api", "dataset", "io", "pipeline", "schemas")]
    value = getattr(datacopilot, name)
    assert name in dir(datacopilot)
    if name == "errors":
        assert value is importlib.import_module("datacopilot.errors")
    else:
        assert not isinstance(value, types.ModuleType), name
        assert any(getattr(m, name, None) is value for m in modules), name


def test_dc_pipeline_stays_the_function_after_its_module_is_imported(tmp_path):
    code = ("import datacopilot.pipeline\nimport datacopilot as dc\nimport datacopilot.pipeline as p\n"
            "assert callable(dc.pipeline) and dc.pipeline is p and dc.pipeline.__name__ == 'pipeline', dc.pipeline\n"
            "assert sys.modules['datacopilot.pipeline'].pipeline is dc.pipeline")
    loaded_after("import sys\n" + code, tmp_path)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        datacopilot.no_such_name  # noqa: B018
    assert not hasattr(datacopilot.kernels, "no_such_name")


def test_a_submodule_is_reachable_as_an_attribute():
    assert datacopilot.api.load is datacopilot.load
    assert datacopilot.errors.InputError.__module__ == "datacopilot.errors"
