"""Model backends: a small serializable descriptor (:class:`ModelSpec`), requests and responses, and
:func:`load_backend`, which builds the backend the descriptor names (lazily, importing its module only then).

Backends:

- ``paddle`` (:mod:`datacopilot.models.backends.paddle`, class ``PaddleBackend``): a PaddleNLP causal LM or the
  project's TinyVLM loaded from a local directory; batched generation with left padding.
- ``openai`` (:mod:`datacopilot.models.backends.openai`, class ``OpenAIBackend``): any OpenAI-compatible
  chat-completions endpoint.

A backend module defines a class taking the spec (``PaddleBackend(spec)``, ``OpenAIBackend(spec)``) that
implements :meth:`Backend.generate`. :class:`~datacopilot.models.backends.cache.CachedBackend` wraps any backend
with an on-disk response cache.

Example::

    >>> spec = ModelSpec(backend="paddle", path="/tmp/tiny_lm", max_new_tokens=16)        # doctest: +SKIP
    >>> backend = load_backend(spec)                                                       # doctest: +SKIP
    >>> backend.generate([Request([{"role": "user", "content": "hi"}])])[0].text           # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import threading

from datacopilot.errors import InputError

from .spec import BACKENDS, FINISH_REASONS, Backend, ModelSpec, Request, Response

__all__ = ["BACKENDS", "FINISH_REASONS", "Backend", "ModelSpec", "Request", "Response", "load_backend",
           "shared_backend"]


def load_backend(spec: ModelSpec, cache_dir: str | None = None) -> Backend:
    """Check ``spec`` and build its backend; with ``cache_dir``, wrap it in a CachedBackend over that directory.

    Example::

        >>> backend = load_backend(ModelSpec(backend="paddle", path="/tmp/tiny_lm"))   # doctest: +SKIP
    """
    if not isinstance(spec, ModelSpec):
        raise InputError(f"load_backend: expected a ModelSpec, got {type(spec).__name__}")
    spec.check()
    module = importlib.import_module(f"{__name__}.{spec.backend}")
    backend = getattr(module, BACKENDS[spec.backend])(spec)
    if cache_dir is not None:
        from .cache import CachedBackend, ResponseCache

        backend = CachedBackend(backend, ResponseCache(cache_dir))
    return backend


_SHARED: dict = {}
_SHARED_LOCK = threading.Lock()


def shared_backend(spec: ModelSpec, cache_dir: str | None = None) -> Backend:
    """One backend per (spec, cache_dir) per process: what operators call in ``setup()`` on each worker."""
    with _SHARED_LOCK:
        key = (spec, cache_dir)
        if key not in _SHARED:
            _SHARED[key] = load_backend(spec, cache_dir)
        return _SHARED[key]
