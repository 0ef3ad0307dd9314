"""Test modules stand alone: none imports another ``test_*`` module.

Helpers shared by several test files live in fixture modules (``tests/conftest.py``,
``tests/servers.py``, ``tests/*_fixtures.py``, ``hil_tests/helpers.py``, ...): importing a test
module would run its module-level set-up and collect its tests twice.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_PACKAGES = ("tests", "hil_tests")


def imported_names(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything ``path`` imports, relative imports resolved; for
    ``from a import b`` both ``a`` and ``a.b`` (b may be a module)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def imports_of_test_modules(root: Path, packages: tuple[str, ...]) -> list[str]:
    """``file:line imports module`` for each import of a ``test_*`` module of ``packages``."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module_package = ".".join(path.relative_to(root).parent.parts)
            for line, name in imported_names(path, module_package):
                target = root / Path(*name.split("."))
                if target.name.startswith("test_") and target.with_suffix(".py").is_file():
                    found.append(f"{path.relative_to(root)}:{line} imports {name}")
    return sorted(set(found))


def test_no_test_module_imports_another() -> None:
    found = imports_of_test_modules(ROOT, TEST_PACKAGES)
    assert found == [], "move the shared helpers into a fixture module:\n" + "\n".join(found)


def test_the_check_finds_every_form_of_import(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    (tests / "deep").mkdir(parents=True)
    for name in ("__init__.py", "deep/__init__.py", "test_a.py", "deep/test_d.py"):
        (tests / name).write_text("HELPER = 1\n")
    (tests / "helpers_fixtures.py").write_text("test_value = 2\n")
    (tests / "test_b.py").write_text(
        "from tests.test_a import HELPER\n"
        "import tests.test_a\n"
        "from tests import test_a\n"
        "from .test_a import HELPER as again\n"
        "from .deep import test_d\n"
        "from tests.helpers_fixtures import test_value\n"
    )
    (tests / "deep" / "test_e.py").write_text("from ..test_a import HELPER\n")

    assert imports_of_test_modules(tmp_path, ("tests",)) == [
        "tests/deep/test_e.py:1 imports tests.test_a",
        "tests/test_b.py:1 imports tests.test_a",
        "tests/test_b.py:2 imports tests.test_a",
        "tests/test_b.py:3 imports tests.test_a",
        "tests/test_b.py:4 imports tests.test_a",
        "tests/test_b.py:5 imports tests.deep.test_d",
    ]
