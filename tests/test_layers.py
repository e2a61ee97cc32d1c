"""Every module under ``src/detloss`` imports only its own layer or layers to its left, and no chain of
imports leads from a module back to itself. Module- and function-level imports both count: a
function-level import still runs, and only hides a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "detloss"

#: Left to right: a module may import its own layer and the layers before it.
LAYERS = (
    "core",
    "ops",
    "functional",
    "assign",
    "criteria",
    "diagnose",
    "weighting",
    "evaluate",
    "models",
    "data",
    "semi",
    "integrations",
    "train",
    "cli",
)
#: Test helpers (reference implementations, DDP spawners): may import any layer, imported by none.
TESTING = "testing"
#: What the top-level ``detloss/__init__.py`` may not import: the harness.
NOT_FROM_TOP = ("train", "cli")

#: Upward imports tolerated (none).
KNOWN: set[tuple[str, str]] = set()  # no upward import is tolerated


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every detloss import in ``path`` at any depth, relative imports resolved;
    ``from detloss.x import y`` counts as ``detloss.x.y`` when ``y`` is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "detloss"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "detloss":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if is_module(sub) else target))
    return out


def layer_of(module: str) -> str | None:
    """``detloss.<layer>...`` -> ``<layer>``; ``None`` for the top-level package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def upward(importer: str, imported: str) -> bool:
    """Whether ``importer`` importing ``imported`` breaks the layering."""
    here, there = layer_of(importer), layer_of(imported)
    if there is None or here == TESTING:
        return False
    if there == TESTING:
        return True
    for layer in (here, there):
        assert layer is None or layer in LAYERS, f"detloss.{layer} is in no layer: add it to LAYERS in {__file__}"
    if here is None:
        return there in NOT_FROM_TOP
    return LAYERS.index(there) > LAYERS.index(here)


def is_known(importer: str, imported: str) -> bool:
    return any(importer == a and (imported == b or imported.startswith(b + ".")) for a, b in KNOWN)


def upward_imports() -> list[tuple[str, str, str]]:
    """``(importer, imported, "file:line: message")`` of every upward import."""
    bad = []
    for name, path in all_modules().items():
        for line, target in imported_modules(path):
            if upward(name, target):
                msg = f"{path}:{line}: {name} ({layer_of(name)}) imports {target} ({layer_of(target)})"
                bad.append((name, target, msg))
    return bad


def test_no_upward_imports():
    bad = [msg for importer, imported, msg in upward_imports() if not is_known(importer, imported)]
    assert not bad, "upward imports (a layer may import only the layers to its left):\n" + "\n".join(bad)


def test_known_violations_still_exist():
    # an entry that no longer occurs must go, so that the list cannot later hide a new violation
    found = [(a, b) for a, b, _ in upward_imports()]
    stale = [k for k in KNOWN if not any(is_known(a, b) and a == k[0] and b.startswith(k[1]) for a, b in found)]
    assert not stale, f"KNOWN lists upward imports that no longer occur: {stale}"


def import_graph() -> dict[str, set[str]]:
    """Module -> the detloss modules it imports, without the KNOWN upward imports (they close today's
    known cycles, which go when they go) and without a package's imports of its own submodules."""
    modules = all_modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for _, target in imported_modules(path):
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in (name, "detloss") or name.startswith(target + ".") or is_known(name, target):
                continue
            deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    # hand-made cases for the two rules, independent of today's tree
    assert upward("detloss.assign.max_iou", "detloss.evaluate.nms")
    assert upward("detloss.semi.teacher", "detloss.train.ema")
    assert not upward("detloss.train.trainer", "detloss.diagnose.doctor")
    assert upward("detloss", "detloss.train.trainer") and not upward("detloss", "detloss.criteria.dense")
    assert upward("detloss.models.grid", "detloss.testing.tiny") and not upward("detloss.testing.tiny", "detloss.train")
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
