"""The session-wide real local Ray instance, shared by the executor and the pipeline tests (one Ray per run)."""

import os
import pathlib

import pytest

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


@pytest.fixture(scope="session")
def ray_session():
    """Start a local Ray (2 CPUs, no dashboard) once; shut it down at the end of the test session."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # workers import test operators (tests/*/_ops.py) by name: put the repository on their path; a Ray of
        # its own ("local"), not whichever instance another process on this machine started last
        path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(params=["local", "ray"])
def executor(request):
    """The name of an executor: each test taking it runs on the local executor and on the real local Ray."""
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    return request.param
