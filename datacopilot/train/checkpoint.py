"""Training checkpoints: model, optimizer (with its LR scheduler), data cursor and every RNG state, as one unit.

A checkpoint is a directory ``<output_dir>/checkpoints/step-000012/`` holding ``model.pdparams``,
``optimizer.pdopt``, ``rng.pkl`` (python, numpy and paddle generator states), ``state.json`` (the step, the data
cursor, the loss history and the config) and ``manifest.json`` (the step and the sha256 and size of each other
file). Every file is written and flushed to disk in a temporary directory, the manifest last, and the directory is
renamed into place: a run killed mid-save leaves a ``.tmp`` directory that nothing reads, never half a checkpoint.
The step a checkpoint records is the step its weights are at (the runner makes the update and the step counter one
unit, see :mod:`datacopilot.train.runner`).

On resume :func:`load_latest` checks the newest checkpoint's files against its manifest before anything is loaded;
a missing, truncated or altered file is reported by name and the next older intact checkpoint is used, with a
warning. When none is intact the error names every checkpoint and its bad file.

>>> path = save_checkpoint(out, step, model, optimizer, state)       # doctest: +SKIP
>>> ckpt = load_latest(out, model, optimizer, warn=print)            # doctest: +SKIP
>>> ckpt.path, ckpt.state["step"]                                    # doctest: +SKIP
('out/checkpoints/step-000012', 12)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass

import numpy as np

from datacopilot.errors import InputError

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
FILES = ("model.pdparams", "optimizer.pdopt", "rng.pkl", "state.json")
FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER = re.compile(r"^step-\d+\.(tmp|old)-\d+$")


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, CHECKPOINTS, f"step-{step:06d}")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Checkpoints under ``output_dir`` as ``(step, path)``, oldest first: every ``step-N`` directory with a
    manifest (or, written before manifests, a ``state.json``); whether its files are intact is checked on load."""
    root = os.path.join(output_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        path = os.path.join(root, name)
        if m and (os.path.isfile(os.path.join(path, MANIFEST)) or os.path.isfile(os.path.join(path, "state.json"))):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint directory under ``output_dir`` (not checked), or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def rng_states() -> dict:
    import paddle

    return {"python": random.getstate(), "numpy": np.random.get_state(), "paddle": paddle.get_rng_state()}


def set_rng_states(states: dict) -> None:
    import paddle

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    paddle.set_rng_state(states["paddle"])


# -- writing --------------------------------------------------------------------------------------------
def _write(directory: str, name: str, data: bytes) -> dict:
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _paddle_bytes(obj) -> bytes:
    import paddle

    buf = io.BytesIO()
    paddle.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(output_dir: str, step: int, model, optimizer, state: dict, keep: int | None = None) -> str:
    """Write the checkpoint of optimizer step ``step`` (steps done so far, which the weights are at); returns its
    directory.

    ``state`` must be JSON-able (cursor, history, config). Each file's sha256 and size go to ``manifest.json``,
    written last; the directory appears under its final name only when complete (an older checkpoint of the same
    step is replaced only after the new one is on disk). ``keep`` limits how many checkpoints stay (the oldest are
    removed after the new one is in place).
    """
    final = checkpoint_dir(output_dir, step)
    root = os.path.dirname(final)
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):  # what a killed save left behind (nothing reads it)
        if _LEFTOVER.match(name):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    tmp = f"{final}.tmp-{os.getpid()}"
    os.makedirs(tmp)
    blobs = {
        "model.pdparams": _paddle_bytes(model.state_dict()),
        "optimizer.pdopt": _paddle_bytes(_by_structured_names(optimizer.state_dict(), model)),
        "rng.pkl": pickle.dumps(rng_states()),
        "state.json": json.dumps({**state, "step": step}, indent=1).encode("utf-8"),
    }
    files = {name: _write(tmp, name, data) for name, data in blobs.items()}
    manifest = {"format": FORMAT, "step": step, "files": files}
    _write(tmp, MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
    _fsync_dir(tmp)
    old = None
    if os.path.exists(final):  # a directory cannot be renamed over a non-empty one: move the old one aside first
        old = f"{final}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(root)
    if old:
        shutil.rmtree(old, ignore_errors=True)
    if keep:
        for _, stale in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


# -- reading --------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint read from disk and checked: its directory, ``state.json`` and the loaded file contents."""

    path: str
    step: int
    state: dict
    weights: dict
    optimizer: dict
    rng: dict


def read_checkpoint(path: str) -> Checkpoint:
    """Read and check the checkpoint in ``path`` without touching any model.

    Each file is checked against the manifest's size and sha256 before it is parsed; raises
    :class:`InputError` naming the file (``.../step-000012/optimizer.pdopt: truncated: 812 of 1604 bytes``).
    """
    blobs = _checked_blobs(path)
    state = _parse(path, "state.json", lambda b: json.loads(b.decode("utf-8")))
    weights = _parse(path, "model.pdparams", _paddle_load, blobs)
    optimizer = _parse(path, "optimizer.pdopt", _paddle_load, blobs)
    rng = _parse(path, "rng.pkl", pickle.loads, blobs)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise InputError(f"{os.path.join(path, 'state.json')}: has no integer `step`")
    m = _STEP_DIR.match(os.path.basename(os.path.normpath(path)))
    if m and int(m.group(1)) != state["step"]:
        raise InputError(f"{os.path.join(path, 'state.json')}: records step {state['step']} but the "
                                f"directory is step {int(m.group(1))}")
    if not isinstance(weights, dict) or not isinstance(optimizer, dict) or not isinstance(rng, dict):
        raise InputError(f"{path}: a file holds something else than a state dict")
    return Checkpoint(path, state["step"], state, weights, optimizer, rng)


def _checked_blobs(path: str) -> dict[str, bytes]:
    """Every file of the checkpoint as bytes, checked against ``manifest.json`` (legacy checkpoints without a
    manifest: only that each file exists)."""
    mpath = os.path.join(path, MANIFEST)
    blobs = {}
    if not os.path.isfile(mpath):
        for name in FILES:
            blobs[name] = _read(path, name)
        return blobs
    manifest = _parse(path, MANIFEST, lambda b: json.loads(b.decode("utf-8")), {MANIFEST: _read(path, MANIFEST)})
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or set(FILES) - set(files):
        raise InputError(f"{mpath}: does not list the checkpoint's files ({', '.join(FILES)})")
    for name in FILES:
        data = _read(path, name)
        want = files[name]
        if len(data) != want.get("bytes"):
            raise InputError(f"{os.path.join(path, name)}: truncated or altered: {len(data)} bytes, the "
                                    f"manifest says {want.get('bytes')}")
        if hashlib.sha256(data).hexdigest() != want.get("sha256"):
            raise InputError(f"{os.path.join(path, name)}: sha256 differs from the manifest's (the file "
                                    f"is corrupt)")
        blobs[name] = data
    return blobs


def _read(path: str, name: str) -> bytes:
    full = os.path.join(path, name)
    try:
        with open(full, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"{full}: missing (incomplete checkpoint)") from None
    except OSError as e:
        raise InputError(f"{full}: cannot be read: {e}") from e


def _paddle_load(data: bytes):
    import paddle

    return paddle.load(io.BytesIO(data))


def _parse(path: str, name: str, parse, blobs: dict | None = None):
    data = blobs[name] if blobs is not None else _read(path, name)
    try:
        return parse(data)
    except Exception as e:  # unpickling, json and paddle raise many types (EOFError, UnpicklingError, ValueError)
        raise InputError(f"{os.path.join(path, name)}: cannot be read ({type(e).__name__}: {e}); the file "
                                f"is truncated or corrupt") from e


def load_checkpoint(path: str, model, optimizer) -> dict:
    """Restore model, optimizer (and scheduler) and RNG states from ``path``; return its ``state.json``.

    Raises :class:`InputError` naming the file when one is missing or damaged (nothing is loaded then), and
    InputError when the weights do not fit the model.
    """
    ckpt = read_checkpoint(path)
    apply_checkpoint(ckpt, model, optimizer)
    return ckpt.state


def apply_checkpoint(ckpt: Checkpoint, model, optimizer) -> None:
    """Give ``model``, ``optimizer`` and the RNGs the states of a checkpoint read by :func:`read_checkpoint`."""
    import paddle

    path, weights = ckpt.path, ckpt.weights
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise InputError(f"{path}/model.pdparams: does not fit the model, missing {missing[:3]}"
                         f"{' ...' if len(missing) > 3 else ''} (was it saved from another model or lora setting?)")
    for key, value in expected.items():
        if list(value.shape) != list(weights[key].shape):
            raise InputError(f"{path}/model.pdparams: {key}: shape {list(weights[key].shape)} does not fit the "
                             f"model's {list(value.shape)}")
    # the base Layer method: paddlenlp's LoRAModel.set_state_dict forwards to the wrapped model, whose names lack
    # the "model." prefix of LoRAModel.state_dict(), and would skip every weight without a word
    paddle.nn.Layer.set_state_dict(model, weights)
    optimizer.set_state_dict(_by_runtime_names(ckpt.optimizer, model, path))
    set_rng_states(ckpt.rng)


def load_latest(output_dir: str, model, optimizer, warn=print) -> Checkpoint | None:
    """Restore the newest intact checkpoint under ``output_dir``; None when there is none at all.

    A damaged newer checkpoint is reported through ``warn`` by file name and skipped; when every checkpoint is
    damaged, raises :class:`InputError` naming each one's bad file.
    """
    found = list_checkpoints(output_dir)
    problems = []
    for _, path in reversed(found):
        try:
            ckpt = read_checkpoint(path)
        except InputError as e:
            problems.append(str(e))
            continue
        for p in problems:
            warn(f"warning: checkpoint skipped: {p}")
        if problems:
            warn(f"warning: resuming from the newest intact checkpoint, {path} (step {ckpt.step})")
        apply_checkpoint(ckpt, model, optimizer)
        return ckpt
    if problems:
        raise InputError(f"{os.path.join(output_dir, CHECKPOINTS)}: no intact checkpoint to resume from:\n"
                                + "\n".join(f"  {p}" for p in problems)
                                + "\nremove the checkpoints directory (or resume=False) to start from step 0")
    return None


# Paddle keys optimizer state by the parameters' runtime names ("linear_12.w_0_moment1_0"), which depend on how
# many layers the process created before; a checkpoint stores them under structured names ("llama.layers.0...")
# so another process (the resumed run) can map them back to its own runtime names.
def _rename(key: str, names: dict[str, str]) -> str | None:
    best = None
    for old in names:
        if (key == old or key.startswith(old + "_")) and (best is None or len(old) > len(best)):
            best = old
    return None if best is None else names[best] + key[len(best):]


def _by_structured_names(state: dict, model) -> dict:
    names = {p.name: n for n, p in model.named_parameters()}
    return _translate(state, names, "@param:")


def _by_runtime_names(state: dict, model, path: str) -> dict:
    names = {"@param:" + n: p.name for n, p in model.named_parameters()}
    out = _translate(state, names, "", strip="@param:")
    bad = [k for k in out if k.startswith("@param:")]
    if bad:
        raise InputError(f"{path}/optimizer.pdopt: state for parameters the model does not have: {bad[:3]}")
    return out


def _translate(state: dict, names: dict[str, str], prefix: str, strip: str = "") -> dict:
    out = {}
    for key, value in state.items():
        if key == "master_weights" and isinstance(value, dict):
            out[key] = _translate(value, names, prefix, strip)
            continue
        if key == "LR_Scheduler" or not isinstance(key, str):
            out[key] = value
            continue
        new = _rename(key, names)
        out[(prefix + new) if new is not None else key] = value
    return out


__all__ = ["save_checkpoint", "load_checkpoint", "load_latest", "read_checkpoint", "apply_checkpoint", "Checkpoint",
           "latest_checkpoint", "list_checkpoints", "checkpoint_dir"]
