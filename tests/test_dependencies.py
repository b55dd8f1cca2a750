"""Every third-party import of the package, the tests and the benchmarks is declared in pyproject.toml.

A fresh virtual environment installs exactly what pyproject.toml declares, so an undeclared import works
on a developer's machine and fails for every user. The imports are read from the source (ast), mapped to
distributions with ``importlib.metadata.packages_distributions()`` and checked against the declaration:
- a module-level import in the package needs a runtime dependency (``[project] dependencies``);
- an import inside a function or a ``try`` block of the package may come from an extra instead;
- the tests and the benchmarks may also use the ``test`` extra.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("spaces", "predictors", "supernet", "search", "conf")
#: the package itself and the tests' own modules (a test may take a helper from another test file)
LOCAL = {"hwnas", "conftest"} | {p.stem for p in (ROOT / "tests").glob("*.py")} | {p.stem for p in (ROOT / "benchmarks").glob("*.py")}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(reqs: list[str]) -> set[str]:
    names = set()
    for r in reqs:
        head = r.split(";")[0]
        names.add(_norm(re.split(r"[<>=!~\[ ]", head, maxsplit=1)[0]))
        for group in re.findall(r"\[([^\]]*)\]", head):  # dask[distributed] also declares distributed
            names |= {_norm(x) for x in group.split(",") if x.strip()}
    return names


def declared() -> tuple[set[str], set[str], set[str]]:
    """(runtime, any extra, test extra) distribution names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    runtime = _requirement_names(project["dependencies"])
    every_extra = _requirement_names([r for reqs in extras.values() for r in reqs])
    return runtime, every_extra, _requirement_names(extras.get("test", []))


def _catches_import_error(node: ast.Try) -> bool:
    names = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
    return any(n in ("Exception", "BaseException") or "ImportError" in n or "ModuleNotFoundError" in n
               for n in names) or any(
        h.type is None for h in node.handlers)


def imports(path: Path) -> list[tuple[str, int, str]]:
    """(top-level module, line, where) for every absolute import; where is "module" (runs on import),
    "lazy" (inside a function) or "optional" (inside a ``try`` that catches ImportError)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name.split(".")[0], child.lineno, where) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], child.lineno, where))
            inner = where
            if isinstance(child, ast.Try) and _catches_import_error(child):
                inner = "optional"
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and where == "module":
                inner = "lazy"
            visit(child, inner)

    visit(tree, "module")
    return found


def undeclared(files: list[Path], allowed_top: set[str], allowed_guarded: set[str]) -> list[str]:
    dists = packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for f in files:
        shown = f.relative_to(ROOT) if f.is_relative_to(ROOT) else f
        for mod, line, where in imports(f):
            if mod in stdlib or mod in LOCAL or mod == "__future__":
                continue
            names = {_norm(d) for d in dists.get(mod, [])}
            allowed = allowed_top if where == "module" else allowed_guarded
            if not names:
                if where != "optional":  # not installed at all: only a try/except ImportError may do that
                    problems.append(f"{shown}:{line}: imports {mod!r}, which no installed distribution provides")
            elif not names & allowed:
                problems.append(f"{shown}:{line}: imports {mod!r} (distribution {sorted(names)}) "
                                "not declared in pyproject.toml")
    return problems


def _py(dirs) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def test_package_imports_are_declared():
    runtime, extra, _ = declared()
    assert not undeclared(_py(PACKAGE_DIRS), runtime, runtime | extra), "\n".join(
        undeclared(_py(PACKAGE_DIRS), runtime, runtime | extra))


def test_test_and_benchmark_imports_are_declared():
    runtime, extra, test = declared()
    files = _py(("tests", "benchmarks"))
    problems = undeclared(files, runtime | test, runtime | extra | test)
    assert not problems, "\n".join(problems)


def test_the_check_catches_an_undeclared_import(tmp_path):
    """The checker itself can fail: a module importing an installed but undeclared distribution."""
    dists = packages_distributions()
    runtime, extra, test = declared()
    # pick any installed distribution that pyproject does not declare (pip is always in a venv)
    stdlib = set(sys.stdlib_module_names) | LOCAL
    foreign = next((m for m, ds in sorted(dists.items()) if m.isidentifier() and m not in stdlib
                    and not {_norm(d) for d in ds} & (runtime | extra | test)), None)
    if foreign is None:
        pytest.skip("every installed distribution is declared")
    probe = tmp_path / "probe.py"
    probe.write_text(f"import numpy\nimport {foreign}\n\ndef later():\n    import {foreign}\n"
                     "try:\n    import not_a_module_anywhere\nexcept ImportError:\n    pass\n"
                     "def f():\n    import also_not_a_module\n")
    problems = undeclared([probe], runtime, runtime | extra)
    assert [(m, w) for m, _, w in imports(probe)] == [
        ("numpy", "module"), (foreign, "module"), (foreign, "lazy"), ("not_a_module_anywhere", "optional"),
        ("also_not_a_module", "lazy")]
    # the undeclared distribution twice, the missing lazy import once; the optional import is fine
    assert len(problems) == 3 and sum(repr(foreign) in p for p in problems) == 2, problems
    assert "also_not_a_module" in problems[2]
