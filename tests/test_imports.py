"""The package's layers and the absence of import cycles, read from the source with ast.

Every ``import`` and ``from ... import`` counts, at module level or inside a function (a lazy
import is still a dependency), relative ones resolved, and so does ``importlib.import_module``
with a literal name. An edge goes to the module named, never implicitly to its parent
packages: ``from vismae.models.formats import vismae_run`` depends on
``vismae.models.formats.vismae_run``, and a package's ``__init__`` importing its own modules is
no cycle.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import vismae

# Lowest first. A module may import its own layer or a lower one. The names are module
# prefixes; "vismae" alone is the package's __init__.
LAYERS = [
    ["vismae", "vismae.io", "vismae.metrics", "vismae.shipped_configs", "vismae.evaluation", "vismae.calibration", "vismae.exam_levels",
     "vismae.paired"],
    ["vismae.data", "vismae.models", "vismae.synthetic"],
    ["vismae.config", "vismae.run_folder"],
    ["vismae.engine"],
    ["vismae.experiments"],
    ["vismae.commands", "vismae.cli", "vismae.demo"],
]
# Imports that the layers would allow but that are refused anyway: the models, the data and the
# phantom know nothing of the config schemas (they take plain arguments).
FORBIDDEN = {
    "vismae.data": ["vismae.config"],
    "vismae.models": ["vismae.config"],
    "vismae.synthetic": ["vismae.config"],
}
# Edges the layers would refuse but that are the point: the package's public facade re-exports
# ``vismae.load_encoder``, imported on first use so that ``import vismae`` stays light.
FACADE = {("vismae", "vismae.models.weights")}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module
    file: Path  # relative to the package's parent folder: vismae/models/mae.py
    line: int
    text: str  # the statement as written, to name it in a failure

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package folder ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph(root: Path, package: str) -> dict[str, list[Import]]:
    """Module -> its imports of other modules of the package (outside modules are left out)."""
    modules = module_names(root, package)
    graph = {}
    for name, path in modules.items():
        source = path.read_text()
        tree = ast.parse(source, filename=str(path))
        is_package = path.name == "__init__.py"
        shown = path.relative_to(root.parent)
        found, seen = [], set()
        for node in ast.walk(tree):
            for target in _targets(node, name, is_package, modules):
                if target != name and (target, node.lineno) not in seen:  # once per statement and module
                    seen.add((target, node.lineno))
                    text = ast.get_source_segment(source, node) or ast.dump(node)
                    found.append(Import(name, target, shown, node.lineno, " ".join(text.split())))
        graph[name] = found
    return graph


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [t for alias in node.names if (t := _known(alias.name, modules))]
    if isinstance(node, ast.ImportFrom):
        base = _absolute(node, module, is_package)
        out = []
        for alias in node.names:
            # "from package import module" names the module; "from module import name" the module
            target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else _known(base, modules)
            if target:
                out.append(target)
        return out
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, (ast.Attribute, ast.Name))
        and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        target = _known(node.args[0].value, modules)
        return [target] if target else []
    return []


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name of ``from <node.module> import``, resolving leading dots."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 >= len(package):
        raise ValueError(f"{module}: relative import beyond the top-level package (level {node.level})")
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str, modules: dict) -> str | None:
    """The longest prefix of ``name`` that is one of the package's modules."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def layer_of(module: str, layers: list[list[str]]) -> tuple[int, str] | None:
    """(layer index, matching prefix) by the longest prefix; the package itself matches only
    its own name."""
    best = None
    for index, prefixes in enumerate(layers):
        for prefix in prefixes:
            matches = module == prefix or ("." in prefix and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > len(best[1])):
                best = (index, prefix)
    return best


def layer_violations(graph: dict[str, list[Import]], layers: list[list[str]], forbidden: dict[str, list[str]]) -> list[str]:
    problems = []
    for module, imports in sorted(graph.items()):
        own = layer_of(module, layers)
        if own is None:
            problems.append(f"{module}: in no layer; add it to LAYERS")
            continue
        for edge in imports:
            theirs = layer_of(edge.target, layers)
            if theirs is None:
                continue  # reported as a module of its own
            if theirs[0] > own[0] and (module, edge.target) not in FACADE:
                problems.append(
                    f"{edge}: {module} (layer {own[0]}, {own[1]}) imports {edge.target} from a higher layer "
                    f"({theirs[0]}, {theirs[1]})"
                )
            elif any(
                _under(module, low) and _under(edge.target, high) for low, highs in forbidden.items() for high in highs
            ):
                problems.append(f"{edge}: {module} must not import {edge.target}")
    return problems


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def import_cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """One cycle per strongly connected component that has one, as the imports that close it."""
    successors = {module: sorted({edge.target for edge in imports}) for module, imports in graph.items()}
    cycles = []
    for component in _strongly_connected(successors):
        if len(component) < 2:
            continue
        start = min(component)
        path = _path_back(start, successors, set(component))
        cycles.append([next(e for e in graph[a] if e.target == b) for a, b in zip(path, path[1:])])
    return cycles


def _strongly_connected(successors: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on a large package)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], 0
    for root in sorted(successors):
        if root in index:
            continue
        work = [(root, iter(successors.get(root, [])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors.get(child, []))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _path_back(start: str, successors: dict[str, list[str]], within: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside a strongly connected component."""
    previous, frontier = {}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in successors[node]:
                if child not in within:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start}: no path back inside its component")


def describe_cycle(cycle: list[Import]) -> str:
    path = " -> ".join([cycle[0].source] + [edge.target for edge in cycle])
    return path + "\n" + "\n".join(f"    {edge}" for edge in cycle)


# ---------------------------------------------------------------------------------------------
# The package.

PACKAGE_ROOT = Path(vismae.__file__).parent


def test_every_import_respects_the_layers():
    problems = layer_violations(import_graph(PACKAGE_ROOT, "vismae"), LAYERS, FORBIDDEN)
    assert not problems, "imports against the layers (lowest first: " + " < ".join(
        "[" + ", ".join(layer) + "]" for layer in LAYERS
    ) + "):\n" + "\n".join(problems)


def test_no_import_cycles():
    cycles = import_cycles(import_graph(PACKAGE_ROOT, "vismae"))
    assert not cycles, "import cycles:\n" + "\n".join(describe_cycle(cycle) for cycle in cycles)


# ---------------------------------------------------------------------------------------------
# The checker itself, on a package built to break the rules.


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


TOY_LAYERS = [["toy", "toy.low", "toy.sub"], ["toy.mid", "toy.schema"], ["toy.high"]]


def toy_graph(tmp_path: Path) -> dict[str, list[Import]]:
    root = write_package(
        tmp_path / "toy",
        {
            "__init__.py": "from toy import low\n",  # a package importing its own module: no cycle
            "low.py": """\
                import os

                def later():
                    from toy.high import thing  # upward, hidden in a function
                    return thing
            """,
            "sub/__init__.py": "",
            "sub/deep.py": "from ..mid import helper  # upward, relative two levels\n",
            "mid.py": """\
                import importlib
                from . import schema, low

                def helper():
                    return importlib.import_module("toy.high")
            """,
            "schema.py": "X = 1\n",
            "high.py": """\
                from toy.mid import helper
                import toy.loop_a

                thing = helper
            """,
            "loop_a.py": "from .loop_b import b\n",
            "loop_b.py": "import toy.loop_a as a\nb = 1\n",
        },
    )
    return import_graph(root, "toy")


def test_the_graph_resolves_every_kind_of_import(tmp_path):
    graph = toy_graph(tmp_path)
    targets = {module: sorted({edge.target for edge in imports}) for module, imports in graph.items()}
    assert targets["toy"] == ["toy.low"]
    assert targets["toy.low"] == ["toy.high"]  # os is not the package's
    assert targets["toy.sub.deep"] == ["toy.mid"]
    assert targets["toy.mid"] == ["toy.high", "toy.low", "toy.schema"]
    assert targets["toy.loop_a"] == ["toy.loop_b"] and targets["toy.loop_b"] == ["toy.loop_a"]


def test_the_checker_reports_upward_imports_and_cycles(tmp_path):
    graph = toy_graph(tmp_path)
    problems = layer_violations(graph, TOY_LAYERS, {"toy.low": ["toy.schema"]})
    assert any(p.startswith("toy/low.py:4: from toy.high import thing") for p in problems), problems
    assert any(p.startswith("toy/sub/deep.py:1: from ..mid import helper") and "toy.sub.deep (layer 0" in p for p in problems)
    assert any("toy.loop_a: in no layer" in p for p in problems)
    # mid -> high through importlib, and nothing else is reported
    assert any(p.startswith('toy/mid.py:5: importlib.import_module("toy.high")') for p in problems)
    assert len(problems) == 5, problems  # the four above and toy.loop_b in no layer

    forbidden = layer_violations(graph, [["toy", "toy.low", "toy.sub", "toy.mid", "toy.schema", "toy.high",
                                          "toy.loop_a", "toy.loop_b"]], {"toy.mid": ["toy.schema"]})  # fmt: skip
    assert forbidden == ["toy/mid.py:2: from . import schema, low: toy.mid must not import toy.schema"]

    cycles = sorted(describe_cycle(cycle).splitlines()[0] for cycle in import_cycles(graph))
    assert cycles == ["toy.high -> toy.mid -> toy.high", "toy.loop_a -> toy.loop_b -> toy.loop_a"]
    closing = [str(edge) for cycle in import_cycles(graph) for edge in cycle]
    assert "toy/loop_b.py:1: import toy.loop_a as a" in closing
