"""The imports point one way, and importing a package builds nothing (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What each room may import of the project, bottom to top; a room always may import itself.
ALLOWED = {
    "settings": set(),
    "classifier": {"settings"},
    "db": {"settings", "classifier"},
    "dispatch": {"settings"},
    "control": {"settings", "classifier", "db", "dispatch"},
    "workers": {"settings", "classifier", "db", "dispatch"},
    "api": {"settings", "classifier", "db", "dispatch"},
    "trainer": {"settings", "classifier", "db"},
    "cli": {"settings", "classifier", "db", "dispatch", "control", "api", "trainer"},
}


def _room(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(ALLOWED)


def test_every_import_points_down() -> None:
    sources = [ROOT / "settings.py", ROOT / "dispatch.py"]
    sources += [p for room in ALLOWED for p in (ROOT / room).rglob("*.py") if "alembic" not in p.parts]
    wrong = {
        f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        for path in sources
        if (bad := _imports(path) - ALLOWED[_room(path)] - {_room(path)})
    }
    assert not wrong, sorted(wrong)


def test_importing_the_packages_builds_no_celery_app() -> None:
    code = (
        "import workers, workers.app, api.main, control.sweep, dispatch, trainer.cli, cli.main; "
        "assert workers.app.get_app.cache_info().currsize == 0, 'a Celery app was built on import'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
