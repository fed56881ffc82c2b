"""The shape of the code, checked: layers, no circles, every adjustment of a library in tuning/.

Read from the source (ast), not by importing it:
- `shared/` (the domain) imports neither Flask, Celery, kombu, gunicorn nor
  gevent, nor the adapters, nor tuning/ or celeryconfig.py;
- `infra/` (the plumbing) knows no domain and no adapter;
- `api/` and `workers/` never import each other;
- no two first-party modules import each other, directly or round a circle;
- outside tuning/, nobody reads a library's private attribute, imports its
  private modules, or assigns to a library's module or class (a monkey-patch);
- views stay thin (README "Map of the code"), and every test file a comment
  or document names exists.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "shared", "infra", "tuning", "workers", "client", "scripts")
TOP_MODULES = ("celeryconfig", "beat_schedule")
FIRST_PARTY = {*PACKAGES, *TOP_MODULES}


def _modules() -> dict[str, Path]:
    found = {name: ROOT / f"{name}.py" for name in TOP_MODULES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _imports(name: str, tree: ast.Module) -> list[tuple[str, int]]:
    """Every module `name` imports (at any depth of the file), with its line."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            subs = [f"{base}.{alias.name}" for alias in node.names]
            if all(sub in MODULES for sub in subs):
                found += [(sub, node.lineno) for sub in subs]  # `from package import module`
            else:
                found.append((base, node.lineno))
    return found


def _first_party(module: str) -> str | None:
    """The first-party module `module` resolves to (a name imported from it counts as it)."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


GRAPH = {
    name: {target for imported, _line in _imports(name, tree) if (target := _first_party(imported))}
    - {name}
    for name, tree in TREES.items()
}


def _layer(module: str) -> str:
    return module.split(".")[0]


def _violations(layer: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for name, tree in TREES.items():
        if _layer(name) != layer:
            continue
        for imported, line in _imports(name, tree):
            if imported in allowed:
                continue
            if imported.split(".")[0] in forbidden:
                bad.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {imported}")
    return bad


def test_the_domain_imports_no_framework_no_adapter_and_no_tuning():
    assert _violations(
        "shared",
        ("flask", "celery", "kombu", "gunicorn", "gevent", "werkzeug", "api", "workers", "tuning",
         "celeryconfig", "beat_schedule"),
        # Password hashing: werkzeug's standalone helpers, its hash format in the users table.
        allowed=("werkzeug.security",),
    ) == []  # fmt: skip


def test_the_plumbing_knows_no_domain_and_no_adapter():
    assert _violations("infra", ("shared", "api", "workers", "celeryconfig", "flask")) == []


def test_the_room_of_adjustments_knows_no_domain_and_no_adapter():
    assert _violations("tuning", ("shared", "api", "workers", "celeryconfig")) == []


def test_the_api_and_the_workers_never_import_each_other():
    assert _violations("api", ("workers",)) == []
    assert _violations("workers", ("api",)) == []


def test_celeryconfig_takes_its_queues_from_the_job_kinds_and_nothing_imports_it():
    assert "shared.jobs.kinds" in GRAPH["celeryconfig"]
    importers = [name for name, targets in GRAPH.items() if "celeryconfig" in targets]
    assert importers == []  # Celery reads it by name (config_from_object)


def test_no_module_imports_itself_back_round_a_circle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert circles == []


def _first_party_names() -> set[str]:
    """Every name first-party code defines: functions, classes, attributes, variables."""
    names: set[str] = set()
    for tree in TREES.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[-1])
    return names


# Underscored names that are public API: namedtuple's methods, werkzeug's documented
# LocalProxy accessor, the sys module's frame access for logging.
PUBLIC_UNDERSCORED = {"_asdict", "_replace", "_fields", "_make", "_get_current_object", "_getframe"}


def _third_party_roots(tree: ast.Module) -> set[str]:
    """Local names bound to a third-party import in this file."""
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in FIRST_PARTY:
                    roots.add((alias.asname or alias.name).split(".")[0])
        elif (
            isinstance(node, ast.ImportFrom)
            and not node.level
            and (node.module or "").split(".")[0] not in FIRST_PARTY
        ):
            roots.update(alias.asname or alias.name for alias in node.names)
    return roots


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_outside_tuning_nobody_reaches_into_a_library():
    ours = _first_party_names()
    bad = []
    for name, tree in TREES.items():
        if _layer(name) == "tuning":
            continue
        where = MODULES[name].relative_to(ROOT)
        libraries = _third_party_roots(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                if any(part.startswith("_") for part in node.module.split(".")[1:]):
                    bad.append(f"{where}:{node.lineno} imports the private {node.module}")
                bad += [
                    f"{where}:{node.lineno} imports the private {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and node.module.split(".")[0] not in FIRST_PARTY
                ]
            elif isinstance(node, ast.Attribute):
                private = node.attr.startswith("_") and not node.attr.startswith("__")
                if private and node.attr not in ours and node.attr not in PUBLIC_UNDERSCORED:
                    bad.append(f"{where}:{node.lineno} reads the private .{node.attr}")
                # Flask's `g` is the request's namespace: storing on it is its purpose.
                root = _root_name(node.value)
                if isinstance(node.ctx, ast.Store) and root in libraries and root != "g":
                    bad.append(f"{where}:{node.lineno} assigns to a library's {node.attr}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "setattr"
                and node.args
                and _root_name(node.args[0]) in libraries
            ):
                bad.append(f"{where}:{node.lineno} setattr on a library object")
    assert bad == []


# A view longer than this is doing domain work (STYLE.md).
MAX_VIEW_LINES = 30
_ROUTE_DECORATORS = {"get", "post", "put", "patch", "delete", "route"}


def _views() -> list[tuple[str, ast.FunctionDef]]:
    views = []
    for name, tree in TREES.items():
        if not name.startswith("api.routes."):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call)
                and isinstance(d.func, ast.Attribute)
                and d.func.attr in _ROUTE_DECORATORS
                for d in node.decorator_list
            ):
                views.append((name, node))
    return views


@pytest.mark.parametrize("view", _views(), ids=lambda v: f"{v[0]}.{v[1].name}")
def test_views_stay_thin(view):
    _module, node = view
    body = node.body[1:] if ast.get_docstring(node) else node.body
    lines = body[-1].end_lineno - body[0].lineno + 1
    assert lines <= MAX_VIEW_LINES


def test_every_test_file_a_comment_or_page_names_exists():
    texts = [p for p in ROOT.rglob("*") if p.suffix in (".py", ".md", ".yml", ".txt", ".toml")]
    missing = set()
    for path in texts:
        if any(part in (".venv", "var", ".git", "node_modules") for part in path.parts):
            continue
        for named in re.findall(r"\btests/[\w/]+\.py\b", path.read_text(encoding="utf-8")):
            if not (ROOT / named).exists():
                missing.add(f"{path.relative_to(ROOT)} names {named}")
    assert sorted(missing) == []
