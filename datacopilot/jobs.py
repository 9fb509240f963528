"""Pipelines as Ray jobs: submit one to a cluster's job server, follow its logs, ask its status, stop it.

.. code-block:: console

    $ datacopilot submit pipeline.yaml --address http://head:8265     # streams the logs, exits 0 when it succeeded
    $ RAY_API_SERVER_ADDRESS=http://head:8265 datacopilot submit pipeline.yaml --no-wait   # or RAY_ADDRESS
    $ datacopilot status raysubmit_XYZ
    $ datacopilot stop raysubmit_XYZ

What the job gets (its ``runtime_env``):

* ``working_dir``: the pipeline file's directory, so relative paths in the pipeline (source paths, ``root``, model
  directories) resolve in the job as they do on the submitting machine. Left out of the upload: version-control and
  virtual-environment folders, caches, and the pipeline's output directory when it lies inside (:data:`EXCLUDES`).
  Ray caps what it accepts (the job server takes 100 MiB a request, the GCS its ``max_grpc_message_size``); an
  upload over a cap is a :class:`~datacopilot.errors.JobError` naming the cap and the largest files. Large inputs
  belong on storage every node reads: an absolute path on a shared filesystem, or an ``s3://`` / ``gs://`` URL.
* ``py_modules``: this datacopilot package, copied as one importable tree (an editable checkout maps its layers from
  several folders; they are gathered under ``datacopilot/``). The cluster's Python needs datacopilot's dependencies
  (pyarrow, polars, ray, ...), not datacopilot itself: the job runs the code it was submitted from, and nothing is
  pip-installed at job start (installing the project with its model extras takes minutes and needs a package
  index the cluster may not reach).
* the user's own ``--runtime-env`` (a YAML or JSON file, or an inline mapping) merged on top: ``py_modules`` and
  ``excludes`` are appended to these, ``env_vars`` merged, any other key (``working_dir``, ``pip``, ``conda``,
  ``container``, ...) replaces.

The entrypoint is ``python -m datacopilot run SPEC --ray auto --out OUT``: inside a job ``--ray auto`` connects to
the job's cluster (Ray sets ``RAY_ADDRESS`` for the job driver). The output directory is resolved on the submitting
side to an absolute path (a relative one against the pipeline's directory, as ``datacopilot run`` would): left
relative, it would land in the job's temporary copy of the working directory and vanish with it. On a multi-node
cluster it must be on storage the nodes share.

``--resume`` resumes a job's run on the same cluster: the same working directory is the same package (its hash), so
the job reads its inputs at the same paths. After the cluster restarts, inputs shipped in the working directory are
unpacked at a new path with new modification times, and the output's plan identity (input paths, sizes and times)
refuses the resume, naming those inputs: inputs meant to be resumed over belong on shared storage anyway.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from datacopilot.errors import JobError, MissingDependencyError

# left out of every upload (Ray's ``excludes``: gitignore patterns, relative to the uploaded directory)
EXCLUDES = (".git", ".hg", ".svn", ".venv", "venv", "__pycache__", "*.pyc", ".ipynb_checkpoints", ".pytest_cache",
            ".mypy_cache", ".ruff_cache", "*.nbi", "*.nbc")
# the folders an editable install maps into the datacopilot namespace (a regular install holds them in one tree)
LAYERS = ("schemas", "kernels", "models", "operators")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_SIZE = re.compile(r"Package size \(([^)]*)\) exceeds the maximum size of ([0-9.]+ ?MiB)")


@dataclass(frozen=True)
class JobState:
    """What the job server says about a job: its id, status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), the
    server's message, the entrypoint, start and end as Unix seconds (None when not yet), and the driver's exit code."""

    job_id: str
    status: str
    message: str | None = None
    entrypoint: str | None = None
    start: float | None = None
    end: float | None = None
    exit_code: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def _job_submission():
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:
        raise MissingDependencyError("ray", "ray") from e
    return JobSubmissionClient


@dataclass(frozen=True)
class Server:
    """A Ray job server: the address asked for and Ray's ``JobSubmissionClient`` talking to it."""

    address: str
    client: object


def connect(address: str | None) -> Server:
    """The job server at ``address`` (``http://HOST:8265``, the head's dashboard port); ``None`` takes
    ``RAY_API_SERVER_ADDRESS``, then ``RAY_ADDRESS``, as Ray's job CLI does (the first leaves ``RAY_ADDRESS`` to
    ``ray.init``, which reads it too). A server that does not answer is a :class:`JobError` naming the address, never
    a traceback. There is no search for a local cluster: on a shared machine it could find someone else's.
    """
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise JobError("no Ray job server given: pass --address http://HOST:8265 (the head's dashboard port) or set "
                       "RAY_API_SERVER_ADDRESS or RAY_ADDRESS")
    cls = _job_submission()
    try:
        return Server(address, cls(address))
    except _auth_error() as e:
        raise JobError(f"the Ray job server at {address} wants a token: {_first_line(e)} (set RAY_AUTH_MODE=token "
                       f"and RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH, as for `ray job submit`)") from None
    except (ConnectionError, OSError, ValueError) as e:
        raise JobError(f"cannot reach a Ray job server at {address}: {_first_line(e)} (start the head with its "
                       f"dashboard, e.g. `ray start --head --dashboard-host=127.0.0.1`, and install ray[default] "
                       f"there)") from None


def _auth_error() -> type | tuple:
    try:
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray before token authentication
        return ()
    return AuthenticationError


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def stage_package(dest: str) -> str:
    """Copy the datacopilot package that is running into ``dest/datacopilot``, as one tree Python imports on its
    own: in an editable install the layers (schemas, kernels, models, operators) live in folders of their own and
    are copied to where a regular install puts them. Returns the package directory (a ``py_modules`` entry).

    >>> import tempfile, os
    >>> pkg = stage_package(tempfile.mkdtemp())
    >>> os.path.isfile(os.path.join(pkg, "schemas", "__init__.py"))
    True
    """
    import datacopilot

    top = os.path.dirname(os.path.abspath(datacopilot.__file__))
    target = os.path.join(dest, "datacopilot")
    ignore = shutil.ignore_patterns(*EXCLUDES)
    shutil.copytree(top, target, ignore=ignore)
    for name in LAYERS:
        spec = importlib.util.find_spec(f"datacopilot.{name}")
        if spec is None or not spec.submodule_search_locations:
            raise JobError(f"cannot ship datacopilot: its subpackage datacopilot.{name} was not found")
        src = os.path.realpath(list(spec.submodule_search_locations)[0])
        if src != os.path.realpath(os.path.join(top, name)):
            shutil.copytree(src, os.path.join(target, name), ignore=ignore)
    return target


def read_runtime_env(value: str | None) -> dict:
    """The user's runtime_env: ``value`` is a YAML or JSON file, or an inline mapping (``'{"pip": ["x"]}'``)."""
    if not value:
        return {}
    import yaml

    text, where = value, "--runtime-env"
    if os.path.isfile(value):
        with open(value) as f:
            text, where = f.read(), value
    try:
        env = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise JobError(f"{where}: not a YAML or JSON mapping: {e}") from None
    if not isinstance(env, dict):
        raise JobError(f"{where}: a runtime_env is a mapping (a YAML or JSON file, or inline JSON), got {value!r}")
    return env


def merge_runtime_env(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``: ``py_modules`` and ``excludes`` appended, ``env_vars`` merged, other keys replaced.

    >>> merge_runtime_env({"py_modules": ["a"], "env_vars": {"X": "1"}, "working_dir": "w"},
    ...                   {"py_modules": ["b"], "env_vars": {"Y": "2"}, "working_dir": "v"})
    {'py_modules': ['a', 'b'], 'env_vars': {'X': '1', 'Y': '2'}, 'working_dir': 'v'}
    """
    out = dict(base)
    for key, value in extra.items():
        if key in ("py_modules", "excludes") and isinstance(value, list):
            out[key] = list(base.get(key) or []) + value
        elif key == "env_vars" and isinstance(value, dict):
            out[key] = {**(base.get(key) or {}), **value}
        else:
            out[key] = value
    return out


def output_dir(spec_path: str, out: str | None) -> str:
    """Where the job writes: ``out``, else the spec's ``output.dir``; a local path made absolute (a relative ``out``
    against the current directory, a relative ``output.dir`` against the spec's directory, as ``run`` does)."""
    from datacopilot.pipeline_spec import read_spec

    if out is None:
        spec = read_spec(spec_path)
        out = (spec.get("output") or {}).get("dir") if isinstance(spec.get("output"), dict) else None
        if not out:
            raise JobError(f"{spec_path}: the job needs an output directory: `output.dir` in the spec or --out")
        out = os.fspath(out)
        if "://" not in out and not os.path.isabs(out):
            out = os.path.join(os.path.dirname(os.path.abspath(spec_path)), out)
    return out if "://" in out else os.path.abspath(out)


def check_spec(spec_path: str) -> None:
    """What can be checked before the job starts without reading its files (which may exist only on the cluster):
    the spec's keys, its operators' names and their parameters' names. Anything else fails in the job, as in ``run``.

    >>> check_spec("typo.yaml")  # ops: [{name: filter_turns, min_turn: 2}]  # doctest: +SKIP
    Traceback (most recent call last):
    datacopilot.errors.JobError: typo.yaml: ops[0] (filter_turns): unknown parameter(s) 'min_turn'; known: ...
    """
    import inspect

    from datacopilot.errors import DataCopilotError
    from datacopilot.operators.registry import get_operator
    from datacopilot.pipeline_spec import parse_spec, read_spec

    try:
        parts = parse_spec(read_spec(spec_path), os.path.dirname(os.path.abspath(spec_path)))
        for i, entry in enumerate(parts["ops"]):
            entry = {"name": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise DataCopilotError(f"ops[{i}]: expected an operator name or a mapping with `name`, got {entry!r}")
            params = inspect.signature(get_operator(entry["name"]).__init__).parameters.values()
            if any(p.kind is p.VAR_KEYWORD for p in params):
                continue
            known = [p.name for p in params if p.name != "self" and p.kind is not p.VAR_POSITIONAL]
            unknown = [k for k in entry if k != "name" and k not in known]
            if unknown:
                raise DataCopilotError(f"ops[{i}] ({entry['name']}): unknown parameter(s) "
                                       f"{', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    except DataCopilotError as e:
        text = str(e)
        raise JobError(text if text.startswith(spec_path) else f"{spec_path}: {text}") from None


def job_runtime_env(spec_path: str, out: str, package_dir: str, extra: dict | None = None) -> dict:
    """The runtime_env of the job running ``spec_path`` (see the module's docstring)."""
    wd = os.path.dirname(os.path.abspath(spec_path))
    excludes = list(EXCLUDES)
    if "://" not in out:
        rel = os.path.relpath(out, wd)
        if not rel.startswith(os.pardir) and rel != os.curdir:
            # anchored, without a trailing slash: the folder itself is skipped, so it does not change the package's
            # hash either (with "out/" Ray still hashes the folder's name: every run would upload a new package,
            # unpacked at a new path, and a resumed run would see other source paths)
            excludes.append("/" + rel.replace(os.sep, "/"))
    return merge_runtime_env({"working_dir": wd, "py_modules": [package_dir], "excludes": excludes}, extra or {})


def entrypoint(spec_path: str, runtime_env: dict, out: str, resume: bool = False) -> str:
    """The job's command line: the spec relative to the job's working directory, run on the job's cluster."""
    wd = runtime_env.get("working_dir")
    if not isinstance(wd, str) or "://" in wd or not os.path.isdir(wd):
        raise JobError(f"runtime_env working_dir must be a local directory holding {spec_path}, got {wd!r}")
    rel = os.path.relpath(os.path.abspath(spec_path), os.path.abspath(wd))
    if rel.startswith(os.pardir):
        raise JobError(f"{spec_path} is not inside the job's working_dir {wd}: the job could not read it")
    args = ["python", "-m", "datacopilot", "run", rel.replace(os.sep, "/"), "--ray", "auto", "--out", out]
    return shlex.join(args + (["--resume"] if resume else []))


def submit(server: Server, spec_path: str, out: str | None = None, resume: bool = False,
           runtime_env: dict | None = None, job_id: str | None = None) -> tuple[str, str, str]:
    """Submit the pipeline in ``spec_path`` as a Ray job; returns the job's id, its entrypoint and its output
    directory.

    >>> server = connect("http://127.0.0.1:8265")  # doctest: +SKIP
    >>> job, command, out = submit(server, "pipeline.yaml")  # doctest: +SKIP
    >>> follow(server, job).status  # doctest: +SKIP
    'SUCCEEDED'
    """
    if not os.path.isfile(spec_path):
        raise JobError(f"{spec_path}: no such file")
    check_spec(spec_path)
    out = output_dir(spec_path, out)
    with tempfile.TemporaryDirectory(prefix="datacopilot-job-") as tmp:
        env = job_runtime_env(spec_path, out, stage_package(tmp), runtime_env)
        command = entrypoint(spec_path, env, out, resume)
        try:
            job = server.client.submit_job(entrypoint=command, runtime_env=env, submission_id=job_id,
                                           metadata={"datacopilot_spec": os.path.abspath(spec_path)})
        except (ConnectionError, OSError) as e:
            raise JobError(f"cannot submit to {server.address}: {_first_line(e)}") from None
        except (RuntimeError, ValueError) as e:
            raise _upload_error(e, env) from None
    return job, command, out


def _upload_error(e: Exception, env: dict) -> JobError:
    text = str(e)
    wd = env.get("working_dir")
    hint = (f"; the largest files in {wd}: {_largest(wd, list(env.get('excludes') or []))}"
            if isinstance(wd, str) and os.path.isdir(wd) else "")
    fix = ("; keep large inputs where every node reads them (an absolute path on a shared filesystem, an s3:// or "
           "gs:// URL) and leave them out of the upload: --runtime-env '{\"excludes\": [\"PATTERN\"]}' or a "
           ".rayignore file")
    m = _SIZE.search(text)
    if m:
        return JobError(f"the job's upload is {m.group(1)} zipped, over the {m.group(2)} a Ray cluster stores for a "
                        f"runtime_env package (its max_grpc_message_size){hint}{fix}")
    if "status code 413" in text:
        return JobError(f"the job's upload is over the 100 MiB the Ray job server accepts in one request "
                        f"(its dashboard's client_max_size){hint}{fix}")
    return JobError(f"the job server refused the job: {_first_line(e)}")


def _largest(directory: str, excludes: list, n: int = 3) -> str:
    """The ``n`` largest files of ``directory`` left in the upload by ``excludes`` (names and anchored paths; Ray's
    .gitignore / .rayignore rules are not applied, so this is a hint)."""
    import fnmatch

    def out(rel: str) -> bool:
        name = os.path.basename(rel)
        return any(rel == e.strip("/") if e.startswith("/") else fnmatch.fnmatch(name, e.rstrip("/"))
                   for e in excludes)

    sizes = []
    for root, dirs, files in os.walk(directory):
        rel_root = os.path.relpath(root, directory)
        rel = (lambda name: name) if rel_root == os.curdir else (lambda name: os.path.join(rel_root, name))
        dirs[:] = [d for d in dirs if not out(rel(d))]
        for f in files:
            if not out(rel(f)):
                try:
                    sizes.append((os.path.getsize(os.path.join(root, f)), rel(f)))
                except OSError:
                    continue
    sizes.sort(reverse=True)
    return ", ".join(f"{name} ({size / 2**20:.1f} MiB)" for size, name in sizes[:n]) or "none"


def _call(server: Server, job_id: str, fn: Callable):
    try:
        return fn()
    except (ConnectionError, OSError) as e:
        raise JobError(f"cannot reach the Ray job server at {server.address}: {_first_line(e)}") from None
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            raise JobError(f"no job {job_id!r} at {server.address}") from None
        raise JobError(f"job {job_id} at {server.address}: {_first_line(e)}") from None


def state(server: Server, job_id: str) -> JobState:
    """The job's :class:`JobState` as the job server has it."""
    info = _call(server, job_id, lambda: server.client.get_job_info(job_id))
    status = getattr(info.status, "value", str(info.status))
    return JobState(job_id=job_id, status=status, message=info.message, entrypoint=info.entrypoint,
                    start=info.start_time / 1000 if info.start_time else None,
                    end=info.end_time / 1000 if info.end_time else None, exit_code=info.driver_exit_code)


def wait(server: Server, job_id: str, timeout: float = 60.0) -> JobState:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or ``timeout`` seconds pass); returns its last state."""
    deadline = time.monotonic() + timeout
    s = state(server, job_id)
    while not s.terminal and time.monotonic() < deadline:
        time.sleep(0.5)
        s = state(server, job_id)
    return s


def follow(server: Server, job_id: str, write: Callable[[str], object] = sys.stdout.write) -> JobState:
    """Stream the job's logs to ``write`` (chunks of text, newlines included) until the job ends; returns its final
    :class:`JobState`. Interrupting (Ctrl-C) stops the streaming, not the job."""
    state(server, job_id)  # an unknown job is an error before any streaming

    async def tail():
        async for chunk in server.client.tail_job_logs(job_id):
            write(chunk)

    import aiohttp

    try:
        asyncio.run(tail())
    except (aiohttp.ClientError, ConnectionError, OSError) as e:
        raise JobError(f"lost the log stream of job {job_id} at {server.address}: {_first_line(e)}; the job may "
                       f"still run: datacopilot status {job_id}") from None
    return wait(server, job_id)


def logs(server: Server, job_id: str) -> str:
    """The job's logs so far (its driver's output)."""
    return _call(server, job_id, lambda: server.client.get_job_logs(job_id))


def stop(server: Server, job_id: str, timeout: float = 60.0) -> tuple[bool, JobState]:
    """Ask the job server to stop the job (Ray sends its driver SIGTERM, then SIGKILL) and wait until it ended.
    Returns whether a stop was sent (False for a job that had already ended) and the job's final state."""
    sent = _call(server, job_id, lambda: server.client.stop_job(job_id))
    return bool(sent), wait(server, job_id, timeout)


def describe(s: JobState) -> list[str]:
    """The lines ``datacopilot status`` prints for a job."""
    lines = [f"{s.job_id}: {s.status}"]
    if s.entrypoint:
        lines.append(f"  entrypoint: {s.entrypoint}")
    stamp = "%Y-%m-%d %H:%M:%S UTC"
    if s.start:
        lines.append(f"  started: {time.strftime(stamp, time.gmtime(s.start))}")
    if s.end:
        lines.append(f"  ended: {time.strftime(stamp, time.gmtime(s.end))} ({s.end - (s.start or s.end):.1f} s)")
    if s.exit_code is not None:
        lines.append(f"  exit code: {s.exit_code}")
    if s.message:  # a failed job's message carries the tail of its logs: its first line, and the error in them
        text = s.message.strip().splitlines()
        lines.append(f"  message: {text[0]}")
        errors = [line for line in text[1:] if line.startswith("error: ")]
        if errors:
            lines.append(f"  {errors[-1]}")
    return lines


def as_json(s: JobState) -> str:
    return json.dumps(s.__dict__, indent=2)
