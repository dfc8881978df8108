"""The measurable size limits of issue 13: no file in appliance/ over 450 lines, no function over 60.

One test per file, so a failure names the file and every function in it that is too long. A function's length is
its `def` line through its last line (decorators aside, nested functions counted in their parent too), read with
`ast`; a file's length is its line count, for every text file of the package (Lua, JavaScript, HTML included).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "appliance"

MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60

TEXT_SUFFIXES = {".py", ".lua", ".js", ".css", ".html", ".service", ".target", ".conf", ".json", ".md"}


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function or method longer than `limit` lines."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = (child.end_lineno or child.lineno) - child.lineno + 1
                    if lines > limit:
                        found.append((name, lines))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def package_files() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts
    )


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_file_and_function_sizes(path: Path) -> None:
    text = path.read_text()
    problems = []
    lines = len(text.splitlines())
    if lines > MAX_FILE_LINES:
        problems.append(f"{lines} lines (limit {MAX_FILE_LINES})")
    if path.suffix == ".py":
        problems += [
            f"{name}() is {n} lines (limit {MAX_FUNCTION_LINES})" for name, n in long_functions(text)
        ]
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_package_is_measured() -> None:
    files = package_files()
    assert PACKAGE / "queue" / "client.py" in files and PACKAGE / "queue" / "scripts" / "claim.lua" in files


def test_long_functions_finds_methods_and_nested_functions() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))  # 59 body lines + def = 60
    source = (
        f"def ok():\n{body}\n\n"
        f"class C:\n    async def long(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n        y = 1\n\n"
        f"def outer():\n    def inner():\n    {body.replace(chr(10), chr(10) + '    ')}\n        y = 1\n"
    )
    assert long_functions(source) == [("C.long", 61), ("outer", 62), ("outer.inner", 61)]
