"""The app's layout rules that no single page test would notice."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_pages_folder_beside_the_main_script():
    # Streamlit treats a pages/ folder next to app.py as its legacy multipage mode: the first run of a server (and
    # every AppTest run) then routes a page URL straight to that file, skipping app.py's navigation and frame.
    assert not (ROOT / "pages").exists(), "page scripts belong in views/, see app.py"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_engine_never_imports_streamlit_and_storage_never_imports_engine():
    for path in (ROOT / "engine").rglob("*.py"):
        assert "streamlit" not in _imports(path), f"{path.relative_to(ROOT)} imports streamlit"
    for path in (ROOT / "storage").rglob("*.py"):
        assert not {"engine", "streamlit", "views"} & _imports(path), f"{path.relative_to(ROOT)} imports a layer above"


# --- the import graph ---------------------------------------------------------------------------------------------

LAYERS = ("engine", "storage", "views")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, Path]:
    modules = {"app": ROOT / "app.py"}
    for layer in LAYERS:
        modules.update({_module_name(path): path for path in (ROOT / layer).rglob("*.py")})
    return modules


def _imported(path: Path, modules) -> list[tuple[str, str | None, tuple[str, ...]]]:
    """(imported module, the top-level function or class it is imported in (None: at module level), names) for
    every import in the file, those inside functions included: they run too, only later."""
    found = []

    def visit(node: ast.AST, where: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inside = where
            if where is None and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inside = child.name
            if isinstance(child, ast.Import):
                found.extend((alias.name, inside, ()) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = tuple(alias.name for alias in child.names)
                # `from storage import panel` imports the module storage.panel
                submodules = [f"{child.module}.{name}" for name in names if f"{child.module}.{name}" in modules]
                found.extend((module, inside, ()) for module in submodules)
                if len(submodules) < len(names):
                    found.append((child.module, inside, names))
            visit(child, inside)

    visit(ast.parse(path.read_text()), None)
    return found


# The engine computes on a Panel it is handed: outside these command-line entry points it imports nothing from
# storage but the contract, storage.panel, and from that no function that reads data (a cache or the demo).
ENTRY_POINTS = {
    "engine.train": "python -m engine.train: trains on the cache (--symbols) or the demo market (--demo)",
    "engine.evaluate": "python -m engine.evaluate: scores a checkpoint on the panel it reads from the cache or the demo",
    "engine.findings": "python -m engine.findings: prints a checkpoint's findings on the cache, the demo it was trained "
                       "on or the demo's null variant",
    "engine.bench": "python -m engine.bench: runs every benchmark below",
    "engine.benchmarks": "each benchmark has a command line and builds its own data (demo panel, synthetic universe)",
    "engine.diagnostics.planted_memory:main": "the probe's command line reads the demo market; the probe takes any panel",
    "engine.diagnostics.view_results:main": "the app's warm-up process reads the cached bars the app showed, to compute "
                                            "the model pages' default views ahead",
}
PANEL_READERS = {"read_panel", "cached_panel", "demo_panel"}


def _is_entry_point(module: str, where: str | None) -> bool:
    return any(module == entry or module.startswith(entry + ".") or f"{module}:{where}" == entry
               for entry in ENTRY_POINTS)


def test_the_engine_imports_only_the_panel_contract_from_storage():
    modules = _project_modules()
    for entry in ENTRY_POINTS:  # a stale entry would hide nothing, but say so rather than linger
        module, _, function = entry.partition(":")
        assert module in modules, f"ENTRY_POINTS names {module}, which does not exist"
        assert not function or f"def {function}(" in modules[module].read_text(), f"{entry} does not exist"
    offending = []
    for module, path in modules.items():
        if not module.startswith("engine"):
            continue
        for imported, where, names in _imported(path, modules):
            if imported.split(".")[0] != "storage" or _is_entry_point(module, where):
                continue
            if imported != "storage.panel" or PANEL_READERS & set(names):
                offending.append(f"{module}{f':{where}' if where else ''} imports {imported} {', '.join(names)}")
    assert not offending, "the engine reads data only in its command-line entry points:\n" + "\n".join(offending)


def test_the_panel_contract_loads_no_database_when_imported():
    tree = ast.parse((ROOT / "storage" / "panel.py").read_text())
    at_module_level = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    at_module_level |= {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert not {"duckdb", "storage.cache"} & at_module_level


def _first_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in the graph as [a, b, ..., a], or None; depth-first with the path kept on a stack."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" when every path from it is explored

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target, path)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_the_project_s_modules_import_each_other_without_cycles():
    # Imports inside functions count: they only postpone the cycle to the first call, and hide it from a reader.
    modules = _project_modules()
    graph = {module: {imported for imported, _, _ in _imported(path, modules) if imported in modules and imported != module}
             for module, path in modules.items()}
    cycle = _first_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_hidden_among_others():
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": set(), "d": {"e"}, "e": {"b"}}
    assert _first_cycle(graph) == ["b", "d", "e", "b"]
    assert _first_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
