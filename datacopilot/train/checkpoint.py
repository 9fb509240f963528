"""Training checkpoints: model, optimizer (with its LR scheduler), data cursor and every RNG state.

A checkpoint is a directory ``<output_dir>/checkpoints/step-000012/`` holding ``model.pdparams``,
``optimizer.pdopt``, ``rng.pkl`` (python, numpy and paddle generator states) and ``state.json`` (the step, the data
cursor, the loss history and the config keys that fix the data order). It is written to a temporary directory and
renamed into place, so a run killed mid-save never leaves a half checkpoint that resume would pick up.

>>> path = save_checkpoint(out, step, model, optimizer, state)     # doctest: +SKIP
>>> state = load_checkpoint(latest_checkpoint(out), model, optimizer)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil

import numpy as np

from datacopilot.errors import InputError

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, CHECKPOINTS, f"step-{step:06d}")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints under ``output_dir`` as ``(step, path)``, oldest first."""
    root = os.path.join(output_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        path = os.path.join(root, name)
        if m and os.path.isfile(os.path.join(path, "state.json")):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint directory under ``output_dir``, or None."""
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


def save_checkpoint(output_dir: str, step: int, model, optimizer, state: dict, keep: int | None = None) -> str:
    """Write a checkpoint for optimizer step ``step`` (steps done so far); returns its directory.

    ``state`` must be JSON-able (step, cursor, history, config). ``keep`` limits how many checkpoints stay on disk
    (the oldest are removed after the new one is in place).
    """
    import paddle

    final = checkpoint_dir(output_dir, step)
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    paddle.save(model.state_dict(), os.path.join(tmp, "model.pdparams"))
    paddle.save(_by_structured_names(optimizer.state_dict(), model), os.path.join(tmp, "optimizer.pdopt"))
    with open(os.path.join(tmp, "rng.pkl"), "wb") as f:
        pickle.dump(rng_states(), f)
    with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
        json.dump({**state, "step": step}, f, indent=1)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if keep:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str, model, optimizer) -> dict:
    """Restore model, optimizer (and scheduler) and RNG states from ``path``; return its ``state.json``.

    Raises InputError naming the checkpoint and the file when something is missing or does not fit the model.
    """
    import paddle

    for name in ("model.pdparams", "optimizer.pdopt", "rng.pkl", "state.json"):
        if not os.path.isfile(os.path.join(path, name)):
            raise InputError(f"{path}: incomplete checkpoint, {name} is missing")
    weights = paddle.load(os.path.join(path, "model.pdparams"))
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
    optimizer.set_state_dict(_by_runtime_names(paddle.load(os.path.join(path, "optimizer.pdopt")), model, path))
    with open(os.path.join(path, "rng.pkl"), "rb") as f:
        set_rng_states(pickle.load(f))
    with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
        return json.load(f)


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


__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints", "checkpoint_dir"]
