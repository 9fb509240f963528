"""A regular (non-editable) install maps the folders into the one ``datacopilot`` namespace and installs no
generic top-level package such as ``models`` or ``kernels``."""

import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True)
    (whl,) = out.glob("datacopilot-*.whl")
    return whl


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("datacopilot-")}
    assert tops == {"datacopilot"}, tops
    # every package folder of the source tree is in the wheel, under the one namespace
    folders = {"datacopilot": "datacopilot", "schemas": "datacopilot/schemas", "operators": "datacopilot/operators",
               "models": "datacopilot/models", "kernels": "datacopilot/kernels"}
    for src, dst in folders.items():
        for init in (ROOT / src).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.relative_to(ROOT / src).as_posix()
            assert f"{dst}/{rel}" in names, f"{src}/{rel} is missing from the wheel: add it to pyproject packages"
    assert "datacopilot/schemas/builtin.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def _venv_seeing_our_packages(env_dir: Path) -> Path:
    """A fresh virtual environment that sees the running interpreter's installed packages (its dependencies) but
    not its ``.pth`` files, so the editable install of this checkout does not shadow the wheel. The running
    interpreter may itself be in a virtual environment: ``system_site_packages`` would give the base
    interpreter's packages instead."""
    venv.create(env_dir, system_site_packages=False, with_pip=True)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    Path(purelib, "_running_env.pth").write_text("".join(p + "\n" for p in ours))
    return py


def test_regular_install_imports(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    py = _venv_seeing_our_packages(env_dir)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    code = ("import datacopilot, datacopilot.schemas as s, datacopilot.kernels, datacopilot.io;"
            "print(datacopilot.__file__); print(s.MM.name)")
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ""}).stdout.split()
    assert str(env_dir) in out[0], out
    assert out[1] == "MM"
    script = env_dir / "bin" / "datacopilot"
    assert script.exists()
