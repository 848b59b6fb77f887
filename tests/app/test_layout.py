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
