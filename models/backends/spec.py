"""What a backend is given and returns: the model descriptor (:class:`ModelSpec`), :class:`Request`,
:class:`Response` and the :class:`Backend` protocol. Backend modules and the cache import these from here;
:mod:`datacopilot.models.backends` re-exports them and builds backends (:func:`load_backend`)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field

from datacopilot.errors import InputError, MissingDependencyError, ModelError

BACKENDS = {"paddle": "PaddleBackend", "openai": "OpenAIBackend"}
FINISH_REASONS = ("stop", "length", "error")


@dataclass(frozen=True)
class ModelSpec:
    """What model to call and how: small and picklable; the model itself is built lazily, once per worker.

    ``backend`` is ``"paddle"`` (``path``: a local model directory; ``tokenizer``: its tokenizer directory,
    by default ``path`` itself when it holds ``tokenizer_config.json``, else ``path/tokenizer``) or ``"openai"``
    (``endpoint``: a base URL such as ``http://127.0.0.1:8000/v1``; ``model``: the model name sent; the API key is
    read from the environment variable ``api_key_env`` and never logged). Generation: ``max_new_tokens``,
    ``temperature`` (0 = greedy), ``top_p``, ``seed``, ``stop`` strings. Execution: ``batch_size`` (paddle),
    ``concurrency``, ``timeout``, ``max_retries`` (openai), ``num_cpus`` / ``num_gpus`` (per worker).
    ``system`` is a system text used by the paddle chat template when a conversation has none.

    Example::

        >>> ModelSpec(backend="openai", endpoint="http://127.0.0.1:8000/v1", model="tiny").key()[:8]  # doctest: +SKIP
    """

    backend: str
    path: str | None = None
    endpoint: str | None = None
    model: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    batch_size: int = 16
    concurrency: int = 16
    timeout: float = 60.0
    max_retries: int = 5
    breaker_after: int = 5
    num_cpus: float = 1
    num_gpus: float = 0
    tokenizer: str | None = None
    system: str | None = None

    def __post_init__(self):
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (tuple, list)) or not all(isinstance(s, str) and s for s in stop):
            raise InputError(f"ModelSpec.stop: expected a tuple of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))
        for name in ("path", "tokenizer"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))
        ints = (("max_new_tokens", 1), ("batch_size", 1), ("concurrency", 1), ("max_retries", 0),
                ("breaker_after", 0))
        for name, low in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InputError(f"ModelSpec.{name}: expected an integer >= {low}, got {v!r}")
        for name, low, strict in (("temperature", 0, False), ("timeout", 0, True), ("num_cpus", 0, False),
                                  ("num_gpus", 0, False)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low or (strict and v == low):
                raise InputError(f"ModelSpec.{name}: expected a number {'>' if strict else '>='} {low}, got {v!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise InputError(f"ModelSpec.top_p: expected a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InputError(f"ModelSpec.seed: expected an integer or None, got {self.seed!r}")

    # -- checks at pipeline build time ---------------------------------------------------------------
    def check(self) -> None:
        """Raise ModelError (or MissingDependencyError) now, not on a worker: unknown backend, missing model
        directory, paddle not installed, no endpoint."""
        if self.backend not in BACKENDS:
            raise ModelError(f"ModelSpec.backend: expected one of {sorted(BACKENDS)}, got {self.backend!r}")
        if self.backend == "paddle":
            if not self.path:
                raise ModelError("ModelSpec.path: the paddle backend needs a local model directory, got None")
            if not os.path.isdir(self.path):
                raise ModelError(f"ModelSpec.path: model directory {self.path!r} does not exist")
            if not any(os.path.isfile(os.path.join(self.path, n)) for n in ("config.json", "vlm_config.json")):
                raise ModelError(f"ModelSpec.path: {self.path!r} is not a model directory (no config.json or "
                                 f"vlm_config.json), got {sorted(os.listdir(self.path))[:10]}")
            tok = self.tokenizer_dir()
            if not os.path.isfile(os.path.join(tok, "tokenizer_config.json")):
                raise ModelError(f"ModelSpec.tokenizer: no tokenizer in {tok!r} (no tokenizer_config.json); save one "
                                 f"in the model directory or its 'tokenizer' folder, or set `tokenizer`")
            for module, package in (("paddle", "paddlepaddle"), ("paddlenlp", "paddlenlp")):
                if not _installed(module):
                    raise MissingDependencyError(package, "paddle")
        else:
            if not self.endpoint or not str(self.endpoint).startswith(("http://", "https://")):
                raise ModelError(f"ModelSpec.endpoint: the openai backend needs an http(s) base URL such as "
                                 f"'http://127.0.0.1:8000/v1', got {self.endpoint!r}")

    def tokenizer_dir(self) -> str:
        """The paddle backend's tokenizer directory (see the class docstring)."""
        if self.tokenizer:
            return self.tokenizer
        path = self.path or ""
        if os.path.isfile(os.path.join(path, "tokenizer_config.json")):
            return path
        return os.path.join(path, "tokenizer")

    # -- identity ------------------------------------------------------------------------------------
    def key(self) -> str:
        """sha256 (hex) of the model identity and the generation parameters: what a cached response depends on.

        Paddle models are identified by the contents of their directory and tokenizer (files over 256 MiB by
        their size and first and last MiB), so rebuilding a model in the same place changes the key; batch size,
        concurrency, timeouts, retries, the breaker and resources are left out (they do not change outputs).
        """
        ident = {"backend": self.backend, "max_new_tokens": self.max_new_tokens,
                 "temperature": float(self.temperature), "top_p": float(self.top_p), "seed": self.seed,
                 "stop": list(self.stop), "system": self.system}
        if self.backend == "paddle":
            ident["model"] = _dir_digest(self.path) if self.path and os.path.isdir(self.path) else self.path
            tok = self.tokenizer_dir()
            ident["tokenizer"] = _dir_digest(tok) if os.path.isdir(tok) else tok
        else:
            ident["endpoint"], ident["model"] = self.endpoint, self.model
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        """A JSON-able dict (``ModelSpec(**d)`` rebuilds the spec)."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass(frozen=True)
class Request:
    """One chat request: OpenAI-style ``messages`` (``{"role", "content"}`` with string content, ``<image>``
    placeholders optional) and the encoded images (PNG/JPEG bytes) in placeholder order. ``seed`` overrides the
    per-request sampling seed (by default derived from the spec's seed and the request's content).

    Example::

        >>> Request([{"role": "user", "content": "<image>describe the image"}], images=(png_bytes,))  # doctest: +SKIP
    """

    messages: list[dict]
    images: tuple[bytes, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.messages, (list, tuple)) or not self.messages:
            raise InputError(f"Request.messages: expected a non-empty list of messages, got {self.messages!r}")
        for i, m in enumerate(self.messages):
            if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
                raise InputError(f"Request.messages[{i}]: expected {{'role': str, 'content': str}}, got {m!r}")
        images = tuple(self.images)
        if not all(isinstance(b, (bytes, bytearray)) for b in images):
            raise InputError(f"Request.images: expected encoded image bytes, got "
                             f"{[type(b).__name__ for b in images]}")
        object.__setattr__(self, "images", tuple(bytes(b) for b in images))

    def digest(self) -> str:
        """sha256 of the messages, the image bytes (each hashed) and the seed: the request's identity."""
        h = hashlib.sha256()
        h.update(json.dumps([{"role": m["role"], "content": m["content"]} for m in self.messages]).encode())
        for b in self.images:
            h.update(hashlib.sha256(b).digest())
        h.update(repr(self.seed).encode())
        return h.hexdigest()


@dataclass
class Response:
    """One answer: ``text`` (cut at the first stop string), ``finish_reason`` (``"stop"``, ``"length"`` or
    ``"error"``), ``error`` (a message when the call failed), ``cached`` (True when it came from the cache)."""

    text: str
    finish_reason: str
    error: str | None = None
    cached: bool = False
    usage: dict = field(default_factory=dict)


class Backend:
    """A model that answers batches of requests; ``generate`` keeps the order of ``requests``."""

    spec: ModelSpec

    def generate(self, requests: list[Request]) -> list[Response]:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (threads, connections); the default does nothing."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


_DIGESTS: dict = {}
_FULL_HASH_LIMIT = 256 << 20


def _dir_digest(path: str) -> str:
    """sha256 over a directory's files (relative names and contents, recursively; files over 256 MiB by their size
    and first and last MiB); memoized on the files' stats."""
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            st = os.stat(full)
            files.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns, full))
    memo = (os.path.abspath(path), tuple(f[:3] for f in files))
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        for rel, size, _, full in files:
            h.update(rel.encode() + b"\0")
            with open(full, "rb") as f:
                if size > _FULL_HASH_LIMIT:          # big weights: size + first and last MiB, not gigabytes
                    h.update(str(size).encode() + f.read(1 << 20))
                    f.seek(size - (1 << 20))
                    h.update(f.read())
                    continue
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]
