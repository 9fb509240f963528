"""The layers as drawn in DESIGN.md, checked on the source by an AST scan of every module (imports at module level
and inside functions: a lazy import hides a dependency, it does not remove it).

- schemas/ and kernels/ import only ``datacopilot.errors`` (and their own package); core (``datacopilot/``) imports
  schemas and kernels, never models, never operators except ``datacopilot.operators.registry`` imported inside a
  function (a plan built from a spec, by operator name); models import schemas, kernels and core; operators import
  all of those; train, cli, serve and demo sit above everything, and nothing below imports them.
- no ``_private`` name crosses a module: neither ``from m import _name`` nor ``m._name`` (a package's ``__init__``
  counts as another module); a private module (``datacopilot.io._fs``) is imported only from inside its package.
- no import cycles (``if TYPE_CHECKING:`` imports are not run, so they are left out of the cycle check; they still
  count for the layers and for private names).

``KNOWN`` lists the violations that remain, each as (file, imported name), or (file, imported module) for an import
that closes a cycle; the list may only shrink (an entry that matches nothing fails the test).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"datacopilot": "datacopilot", "schemas": "datacopilot.schemas", "kernels": "datacopilot.kernels",
           "models": "datacopilot.models", "operators": "datacopilot.operators"}
APPS = ("datacopilot.train", "datacopilot.cli", "datacopilot.cli_pipeline", "datacopilot.cli_jobs", "datacopilot.jobs",
        "datacopilot.cli_eval", "datacopilot.serve", "datacopilot.demo", "datacopilot.demo_data",
        "datacopilot.demo_synth", "datacopilot.__main__")
MAY_IMPORT = {
    "errors": {"errors"},
    "schemas": {"errors", "schemas"},
    "kernels": {"errors", "kernels"},
    "core": {"errors", "schemas", "kernels", "core"},
    "models": {"errors", "schemas", "kernels", "core", "models"},
    "operators": {"errors", "schemas", "kernels", "core", "models", "operators"},
    "apps": {"errors", "schemas", "kernels", "core", "models", "operators", "apps"},
}
REGISTRY = "datacopilot.operators.registry"  # the one way core reaches operators: by name, from inside a function

# Violations that remain, as (file, imported name). Each one is excused for every rule it breaks, and an excused
# import is left out of the cycle check. An entry that no longer matches anything fails the test: remove it.
KNOWN: set = set()  # none left; a new entry needs a reason beside it


@dataclass(frozen=True)
class Import:
    file: str          # repository-relative path of the importing file
    line: int
    importer: str      # its module name
    target: str        # the module imported (a name imported from a package's __init__ targets the package)
    name: str          # what the statement names: a module, or ``module.attribute``
    lazy: bool         # inside a function
    typing_only: bool  # under ``if TYPE_CHECKING:``


def modules() -> dict[str, Path]:
    """Module name -> file, for every source file of the layers."""
    out = {}
    for folder, package in FOLDERS.items():
        for root, _, files in os.walk(ROOT / folder):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, f), ROOT / folder)[:-3].replace(os.sep, ".")
                    rel = rel.removesuffix("__init__").rstrip(".")
                    out[f"{package}.{rel}" if rel else package] = Path(root) / f
    return out


MODULES = modules()


def layer(module: str) -> str:
    if module == "datacopilot.errors":
        return "errors"
    for name in ("schemas", "kernels", "models", "operators"):
        if module == f"datacopilot.{name}" or module.startswith(f"datacopilot.{name}."):
            return name
    if any(module == a or module.startswith(a + ".") for a in APPS):
        return "apps"
    return "core"


def package_exports() -> dict[str, str]:
    """``datacopilot``'s lazy public names -> the module that defines them (its ``_EXPORTS`` table)."""
    tree = ast.parse((ROOT / "datacopilot" / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "_EXPORTS":
            table = ast.literal_eval(node.value)
            return {k: "datacopilot" + v if v else f"datacopilot.{k}" for k, v in table.items()}
    return {}


EXPORTS = package_exports()


def private_part(name: str) -> int | None:
    """Index of the first ``_private`` component of a dotted name, or None."""
    for i, part in enumerate(name.split(".")):
        if part.startswith("_") and not part.startswith("__"):
            return i
    return None


class Scan(ast.NodeVisitor):
    """The imports of one module, and its ``module._name`` attribute reads."""

    def __init__(self, module: str, path: Path):
        self.module, self.file = module, str(path.relative_to(ROOT))
        self.package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        self.imports: list[Import] = []
        self.private_reads: list[tuple[int, str]] = []  # (line, "module._name")
        self.scopes: list[dict[str, str]] = [{}]  # alias -> module, innermost last
        self.depth = 0
        self.typing = 0

    def add(self, node: ast.AST, target: str, name: str) -> None:
        self.imports.append(Import(self.file, node.lineno, self.module, target, name, self.depth > 0, self.typing > 0))

    def visit_If(self, node: ast.If) -> None:
        typing = "TYPE_CHECKING" in ast.dump(node.test)
        self.typing += typing
        for child in node.body:
            self.visit(child)
        self.typing -= typing
        for child in node.orelse:
            self.visit(child)

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.scopes.append({})
        self.generic_visit(node)
        self.scopes.pop()
        self.depth -= 1

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] != "datacopilot":
                continue
            self.add(node, alias.name, alias.name)
            if alias.asname:
                self.scopes[-1][alias.asname] = alias.name
            else:
                self.scopes[-1]["datacopilot"] = "datacopilot"

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - (node.level - 1)] + ([base] if base else []))
        if base.split(".")[0] != "datacopilot":
            return
        for alias in node.names:
            full = f"{base}.{alias.name}"
            if full in MODULES:
                self.add(node, full, full)
                self.scopes[-1][alias.asname or alias.name] = full
            elif base == "datacopilot" and alias.name in EXPORTS:
                self.add(node, EXPORTS[alias.name], full)
            else:
                self.add(node, base, full)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name):
            module = next((s[value.id] for s in reversed(self.scopes) if value.id in s), None)
            if module is not None:
                for attr in reversed(chain):
                    if f"{module}.{attr}" in MODULES:
                        module = f"{module}.{attr}"
                        continue
                    if attr.startswith("_") and not attr.startswith("__"):
                        self.private_reads.append((node.lineno, f"{module}.{attr}"))
                    break
                return  # the chain is handled as a whole
        self.generic_visit(node)


def scan_all() -> list[Scan]:
    out = []
    for module, path in sorted(MODULES.items()):
        s = Scan(module, path)
        s.visit(ast.parse(path.read_text(), str(path)))
        out.append(s)
    return out


SCANS = scan_all()
IMPORTS = [i for s in SCANS for i in s.imports if i.target in MODULES and i.target != i.importer]


def layer_violations(imports: list[Import]) -> list[tuple[str, int, str, str]]:
    """(file, line, imported name, rule) for every import that points up or sideways across the layers."""
    out = []
    for i in imports:
        src, dst = layer(i.importer), layer(i.target)
        if dst in MAY_IMPORT[src] or (src == "core" and i.target == REGISTRY and i.lazy):
            continue
        why = f"{src} may import only {', '.join(sorted(MAY_IMPORT[src]))}"
        if src == "core":
            why += f" (operators only through {REGISTRY}, imported inside a function)"
        out.append((i.file, i.line, i.name, f"layers: {i.importer} ({src}) imports {i.target} ({dst}); {why}"))
    return out


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def private_violations(scans: list[Scan]) -> list[tuple[str, int, str, str]]:
    """(file, line, imported name, rule) for every ``_private`` name or module reached from another module."""
    out = []
    for s in scans:
        for line, name in [(i.line, i.name) for i in s.imports] + s.private_reads:
            if private_part(name) is None:
                continue
            parts = name.split(".")
            owner = max((".".join(parts[:k]) for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in MODULES),
                        key=len, default=None)
            if owner is None:
                continue
            k = private_part(owner)
            if k is not None:  # a private module: fine from inside its own package
                package = ".".join(parts[:k])
                if not inside(s.module, package):
                    private_module = ".".join(parts[: k + 1])
                    public = f"{package}.{parts[k].lstrip('_')}"
                    fix = (f"import it from {public}" if public in MODULES
                           else f"make the module public or re-export the name from {package}")
                    out.append((s.file, line, name, f"private: {s.module} imports the private module "
                                f"{private_module} from outside {package}; {fix}"))
            rest = parts[len(owner.split(".")):]
            if rest and private_part(rest[0]) == 0 and owner != s.module:
                out.append((s.file, line, name, f"private: {s.module} uses {rest[0]} of {owner}; make it public "
                            f"or move it where it is used"))
    return out


def graph(excused: set[tuple[str, str]]) -> dict[str, dict[str, Import]]:
    """module -> {imported module: the first import of it}, run-time imports only, the lazy registry path and the
    excused imports (by imported name, or by imported module for a whole edge) left out."""
    g: dict[str, dict[str, Import]] = {m: {} for m in MODULES}
    for i in IMPORTS:
        if i.typing_only or (i.file, i.name) in excused or (i.file, i.target) in excused:
            continue
        if layer(i.importer) == "core" and i.target == REGISTRY and i.lazy:
            continue
        g[i.importer].setdefault(i.target, i)
    return g


def cycles(g: dict[str, dict[str, Import]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    for root in g:
        if root in index:
            continue
        work = [(root, iter(g[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(g[w])))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def a_cycle(g: dict[str, dict[str, Import]], comp: list[str]) -> list[Import]:
    """One cycle through the first module of ``comp``, as the imports that close it."""
    start, members = comp[0], set(comp)
    seen, path = {start: None}, [start]
    queue = [start]
    while queue:  # breadth first: the shortest way back to start
        v = queue.pop(0)
        for w, imp in g[v].items():
            if w == start:
                chain, u = [imp], v
                while seen[u] is not None:
                    chain.append(seen[u])
                    u = seen[u].importer
                return chain[::-1]
            if w in members and w not in seen:
                seen[w] = imp
                queue.append(w)
    return []


def cycle_messages(excused: set[tuple[str, str]]) -> list[str]:
    g = graph(excused)
    out = []
    for comp in cycles(g):
        steps = "\n".join(f"    {i.file}:{i.line}: {i.importer} imports {i.target}" for i in a_cycle(g, comp))
        out.append(f"cycle: {len(comp)} modules import each other ({', '.join(comp[:8])}"
                   f"{' ...' if len(comp) > 8 else ''}); one loop:\n{steps}")
    return out


def test_the_scan_sees_every_layer_and_lazy_imports():
    assert {layer(m) for m in MODULES} == set(MAY_IMPORT)
    assert any(i.lazy for i in IMPORTS) and any(not i.lazy for i in IMPORTS)
    assert layer("datacopilot.train.loop") == layer("datacopilot.cli") == "apps"
    assert layer("datacopilot.io.jsonl") == layer("datacopilot.dataset") == "core"


def planted(src: str, module: str = "datacopilot.schemas.planted", file: str = "planted.py") -> Scan:
    """A scan of ``src`` as if it were the module ``module`` (``file``: ``__init__.py`` for a package)."""
    s = Scan(module, ROOT / "datacopilot" / file)
    s.visit(ast.parse(src))
    return s


def test_the_rules_catch_a_planted_import_of_each_kind():
    s = planted("from datacopilot.errors import InputError\n"
                "def f():\n    from datacopilot.operators.clean import x\n"
                "from datacopilot.io.jsonl import read_lines, _helper\n"
                "import datacopilot.io._fs as fs\n"
                "def g():\n    from datacopilot import errors\n    return errors._secret, errors.InputError\n")
    layers = {(line, name) for _, line, name, _ in layer_violations(s.imports)}
    assert layers == {(3, "datacopilot.operators.clean.x"), (4, "datacopilot.io.jsonl.read_lines"),
                      (4, "datacopilot.io.jsonl._helper"), (5, "datacopilot.io._fs")}
    private = {(line, name): why for _, line, name, why in private_violations([s])}
    assert set(private) == {(4, "datacopilot.io.jsonl._helper"), (5, "datacopilot.io._fs"),
                            (8, "datacopilot.errors._secret")}
    assert "private module datacopilot.io._fs from outside datacopilot.io" in private[5, "datacopilot.io._fs"]
    assert [i.lazy for i in s.imports if i.line in (3, 4)] == [True, False, False]


def test_a_private_module_is_fine_inside_its_package_and_its_private_names_are_not():
    inside_io = planted("from ._fs import get_fs, _full\nfrom . import _fs\n", "datacopilot.io.planted")
    assert {(line, name) for _, line, name, _ in private_violations([inside_io])} == {(1, "datacopilot.io._fs._full")}
    package_init = planted("from .hashing import _mix\n", "datacopilot.kernels", "__init__.py")
    assert [name for _, _, name, _ in private_violations([package_init])] == ["datacopilot.kernels.hashing._mix"]


def test_core_reaches_operators_only_through_the_registry_inside_a_function():
    lazy = planted("def f():\n    from datacopilot.operators.registry import create\n", "datacopilot.planted")
    eager = planted("from datacopilot.operators.registry import create\n", "datacopilot.planted")
    assert layer_violations(lazy.imports) == []
    assert [line for _, line, _, _ in layer_violations(eager.imports)] == [1]


def test_cycles_are_found_with_the_imports_that_close_them():
    def imp(a, b):
        return Import(f"{a}.py", 1, a, b, b, False, False)
    g = {"a": {"b": imp("a", "b")}, "b": {"c": imp("b", "c")}, "c": {"a": imp("c", "a")}, "d": {"a": imp("d", "a")}}
    assert cycles(g) == [["a", "b", "c"]]
    assert [(i.importer, i.target) for i in a_cycle(g, ["a", "b", "c"])] == [("a", "b"), ("b", "c"), ("c", "a")]
    del g["c"]["a"]
    assert cycles(g) == []


@pytest.mark.parametrize("rule", ["layers", "private"])
def test_no_import_crosses_the_layers_or_reaches_a_private_name(rule):
    found = layer_violations(IMPORTS) if rule == "layers" else private_violations(SCANS)
    bad = [f"{f}:{line}: {why} (`{name}`)" for f, line, name, why in found if (f, name) not in KNOWN]
    assert not bad, f"{len(bad)} {rule} violation(s):\n" + "\n".join(bad)


def test_no_import_cycles():
    bad = cycle_messages(set(KNOWN))
    assert not bad, "\n".join(bad)


def test_the_known_list_only_shrinks():
    """Every KNOWN entry still matches a violation or an import inside a cycle; a fixed one must be removed."""
    used = {(f, name) for f, _, name, _ in layer_violations(IMPORTS) + private_violations(SCANS)}
    in_cycle = {m: k for k, comp in enumerate(cycles(graph(set()))) for m in comp}
    used |= {key for i in IMPORTS if i.importer in in_cycle and in_cycle.get(i.target) == in_cycle[i.importer]
             for key in ((i.file, i.name), (i.file, i.target))}
    stale = sorted(set(KNOWN) - used)
    assert not stale, "fixed, remove from KNOWN in tests/test_layers.py:\n" + "\n".join(map(str, stale))
