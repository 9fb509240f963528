"""Publishing a directory output atomically: the write side of ``manifest.json``.

A write (``write_shards``, ``Pipeline.write``, a Ray write) is a *generation* ``gNNNN`` of its output directory.
It writes every file under the hidden staging directory ``<dir>/.staging-gNNNN/``, with names that hold the
generation (``part-gNNNN-00000.arrow``), so they never collide with the files of the published output. Then
:meth:`Staged.publish` moves them into ``<dir>`` and replaces ``<dir>/manifest.json`` by an atomic rename, last:
until that rename readers see the previous output, after it the new one, never a mix. The previous output's files
and the staging directory are removed after the rename. A pipeline's ``report.json`` is staged too and listed in
the manifest (``"report"``: file, bytes, sha256; the report holds its generation): it is moved in last, just before
the manifest, so a publish killed between the two is the one state where the report is not the published output's;
its staged manifest says so, a resumed run finishes the publish and a fresh write removes that report.

A pipeline run keeps its progress in the staging directory's own ``manifest.json`` (``complete: false``), so an
interrupted run is resumed from there, and ``datacopilot.load`` of the output directory never reads it unless asked
(``partial=True``).

>>> import os, tempfile
>>> out = tempfile.mkdtemp()
>>> run = Staged.fresh(out)
>>> with open(run.path("part-g0001-00000.txt"), "w") as f: _ = f.write("hi")
>>> sorted(run.publish({"format": "jsonl", "rows": 0, "shards": [{"file": "part-g0001-00000.txt", "rows": 0,
...        "bytes": 2, "sha256": ""}]})["shards"][0])
['bytes', 'file', 'rows', 'sha256']
>>> sorted(os.listdir(out))
['manifest.json', 'part-g0001-00000.txt']
"""

from __future__ import annotations

import json
import re

from datacopilot.errors import InputError

from ._fs import MANIFEST, STAGING, atomic_open, get_fs, join, read_json, staging_dirs

_TAGGED = re.compile(r"^part-g\d{4,}-")  # the names only a generation of an output gives its files
_TEMP = re.compile(r"^(manifest|report)\.json\.tmp-[0-9a-f]{8}$")  # atomic_open's, of a rename not done


def listed(manifest: dict | None) -> list[str]:
    """Every file a manifest names, relative to its directory: shards, quarantine and a pipeline's state."""
    if not manifest:
        return []
    names = [s["file"] for s in manifest.get("shards", []) + manifest.get("quarantine", [])]
    names += [manifest["report"]["file"]] if manifest.get("report") else []
    return names + list(manifest.get("pipeline", {}).get("state", {}).get("seen", {}).values())


def generation_of(stage: str) -> int:
    """``.staging-g0007`` -> 7."""
    return int(stage[len(STAGING) + 1:])


class Staged:
    """One generation of the output in ``directory``: its staging directory and its publishing step."""

    def __init__(self, directory: str, generation: int):
        self.dir, self.generation = directory, generation
        self.tag = f"g{generation:04d}"
        self.stage = join(directory, f"{STAGING}{self.tag}")

    @classmethod
    def fresh(cls, directory: str) -> Staged:
        """A new generation: after the published one and every staged one; the staging directories of
        interrupted writes and the files an interrupted publishing step had moved in are removed (the published
        output's files are kept)."""
        fs, d = get_fs(directory)
        fs.makedirs(d, exist_ok=True)
        published = read_json(join(directory, MANIFEST))
        stages = staging_dirs(directory)
        gen = max([int((published or {}).get("generation", 0))] + [generation_of(s) for s in stages]) + 1
        for s in stages:
            _rm(join(directory, s), recursive=True)
        _remove_unlisted(directory, published)
        _remove_foreign_report(directory, published)
        run = cls(directory, gen)
        fs.makedirs(get_fs(run.stage)[1], exist_ok=True)
        return run

    @classmethod
    def staged(cls, directory: str) -> tuple[Staged, dict] | None:
        """The newest staged generation that recorded its progress, with its manifest; None without one."""
        for stage in reversed(staging_dirs(directory)):
            m = read_json(join(join(directory, stage), MANIFEST))
            if m is not None:
                return cls(directory, generation_of(stage)), m
        return None

    def path(self, name: str) -> str:
        """Where the file ``name`` (relative to the output directory) is written while staged."""
        path = join(self.stage, name)
        if "/" in name:
            fs, p = get_fs(path)
            fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        return path

    def save(self, manifest: dict) -> None:
        """Record the staged progress (atomically), in the staging directory: what a resumed run continues."""
        _write_json(join(self.stage, MANIFEST), {**manifest, "generation": self.generation})

    def publish(self, manifest: dict) -> dict:
        """Move the listed files in, replace the output's manifest (the one atomic step), then remove the
        previous output's files and the staging directory; returns the published manifest."""
        manifest = {**manifest, "generation": self.generation, "complete": True}
        self.save(manifest)  # a run killed while moving files in is resumed from this, and finishes the move
        fs, _ = get_fs(self.dir)
        report = [manifest["report"]["file"]] if manifest.get("report") else []  # last: nearest the rename
        for name in [s["file"] for s in manifest["shards"] + manifest.get("quarantine", [])] + report:
            src, dst = join(self.stage, name), join(self.dir, name)
            if fs.exists(get_fs(src)[1]):
                if "/" in name:
                    fs.makedirs(get_fs(dst)[1].rsplit("/", 1)[0], exist_ok=True)
                fs.mv(get_fs(src)[1], get_fs(dst)[1])
            elif not fs.exists(get_fs(dst)[1]):
                raise InputError(f"{src}: staged file missing: cannot publish {self.dir}")
        previous = read_json(join(self.dir, MANIFEST))
        _write_json(join(self.dir, MANIFEST), manifest)  # published
        new = set(listed(manifest))
        for name in listed(previous):
            if name not in new:
                _rm(join(self.dir, name))
        _remove_unlisted(self.dir, manifest)  # what an interrupted publish left (a resumed one finishes it)
        _rm(self.stage, recursive=True)
        return manifest


def _remove_unlisted(directory: str, manifest: dict | None) -> None:
    """Remove the files of generations that ``manifest`` does not list and the temporary files of interrupted
    renames of the manifest or the report, from ``directory`` and its quarantine folder."""
    keep = set(listed(manifest))
    for sub in ("", "quarantine"):
        for name in _names(join(directory, sub) if sub else directory):
            rel = f"{sub}/{name}" if sub else name
            if (_TAGGED.match(name) or _TEMP.match(name)) and rel not in keep:
                _rm(join(directory, rel))


def _remove_foreign_report(directory: str, published: dict | None) -> None:
    """Remove a ``report.json`` that the published manifest lists with another checksum: one an interrupted
    publish moved in (it is the unpublished generation's). A report the manifest does not list is kept (outputs
    written before reports were listed)."""
    from ._fs import check_entries

    if published and published.get("report") and check_entries(directory, {"report": published["report"]}):
        _rm(join(directory, published["report"]["file"]))


def _write_json(path: str, data: dict) -> None:
    with atomic_open(path, "wb") as f:
        f.write(json.dumps(data, indent=1).encode())


def _names(directory: str) -> list[str]:
    fs, p = get_fs(directory)
    try:
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _rm(path: str, recursive: bool = False) -> None:
    fs, p = get_fs(path)
    if fs.exists(p):
        fs.rm(p, recursive=recursive)


__all__ = ["Staged", "listed", "generation_of"]
