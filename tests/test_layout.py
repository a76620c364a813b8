"""The package's layout rules (docs/architecture.md): no import cycle between modules, every command module
registered on the app, and no module past ~500 lines without the reason written at its top."""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "stepdpo_cli"
LONG_MODULE_LINES = 500


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The package modules `path` imports anywhere (function-level imports too): `from X import y` counts as
    X.y when that is a module, else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
                elif target in known:
                    found.add(target)
    found.discard(name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_circle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_itself_back():
    known = set(modules())
    graph = {name: imports_of(name, path, known) for name, path in modules().items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_backends_import_no_registry_and_base_imports_no_backend():
    known = set(modules())
    table = modules()
    base = imports_of("stepdpo_cli.backends.base", table["stepdpo_cli.backends.base"], known)
    assert not {m for m in base if m.startswith("stepdpo_cli.backends.")}
    for backend in ("hf", "vllm", "openai"):
        name = f"stepdpo_cli.backends.{backend}"
        assert "stepdpo_cli.backends.registry" not in imports_of(name, table[name], known)


def test_every_command_module_is_registered_on_the_app():
    from stepdpo_cli.cli import app

    registered = {command.callback.__module__ for command in app.registered_commands}
    expected = {module_name(path) for path in (PACKAGE / "commands").glob("*.py")
                if path.stem not in ("__init__", "options")}
    assert registered == expected


@pytest.mark.parametrize("name", sorted(modules()))
def test_long_modules_say_why_at_their_top(name):
    path = modules()[name]
    lines = path.read_text().count("\n")
    if lines > LONG_MODULE_LINES:
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "Why it is long:" in docstring, f"{path} has {lines} lines and no 'Why it is long:' in its docstring"
