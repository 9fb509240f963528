"""One real local Ray instance for all executor tests (started once per session, ~5 s)."""

from ._ray import executor, ray_session  # noqa: F401
