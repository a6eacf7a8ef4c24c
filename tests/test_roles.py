"""Roles kept apart, checked statically: the server (fl_server) never imports the miner (fl_client) and
the reverse; aggregator/ (pure protocol code) imports neither; the publisher's scripts import neither
role's internals. Walks the AST of every module, so lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "fl_server": {"fl_client"},
    "fl_client": {"fl_server"},
    "aggregator": {"fl_server", "fl_client", "contracts"},
}
PUBLISHER_SCRIPTS = ("publish_task.py", "key_service.py")


def imported_roots(path: Path) -> set[str]:
    """Top-level package names ``path`` imports (absolute imports, anywhere in the module)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
        ):
            roots.add(node.args[0].value.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_role_never_imports_the_other(package):
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        bad = imported_roots(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(REPO)} imports {', '.join(sorted(bad))}")
    assert not offenders, "\n".join(offenders)


def test_publisher_scripts_import_neither_role():
    for name in PUBLISHER_SCRIPTS:
        path = REPO / "scripts" / name
        if path.exists():
            assert not imported_roots(path) & {"fl_server", "fl_client"}, name


def test_the_checker_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from fl_client.identity import load_identity\n    import fl_server.app as a\n")
    assert {"fl_client", "fl_server"} <= imported_roots(module)
