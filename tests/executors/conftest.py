"""One real local Ray instance for all executor tests (started once per session, ~5 s)."""

import os
import pathlib

import pytest

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # workers import the test operators (tests/executors/_ops.py) by name: put the repository on their path
        path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()
