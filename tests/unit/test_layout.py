"""The code's shape, as docs/design.md states it: small modules, classes and functions, and
dependencies that point one way (hooks -> decide / upstream / serve -> store -> model)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "addon" / "hubcache"
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 600, 300, 60

# layer -> the layers it may import (itself always). Top-level modules are layers of their own.
MAY_IMPORT = {
    "model": set(),
    "registries": set(),
    "settings": {"model", "registries"},
    "expiring": set(),
    "logs": set(),
    "metrics": set(),
    "worker": set(),
    "decide": {"model", "registries", "settings"},
    "status": {"model"},
    "store": {"model", "settings", "logs"},
    "upstream": {"model", "registries", "settings", "expiring", "logs", "metrics", "decide"},
    "serve": {"model", "settings", "logs", "store", "upstream", "decide"},
    "hooks": {"model", "registries", "settings", "expiring", "logs", "metrics", "decide", "store", "upstream", "serve",
              "status", "worker"},
    "tools": {"model", "registries", "settings", "logs", "decide", "store", "serve", "hooks", "worker"},
}
PURE = {"model", "registries", "settings", "expiring", "decide", "status"}  # testable without a proxy, a store or a network


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_classes_and_functions_stay_small(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno - node.lineno + 1 <= MAX_CLASS_LINES, f"class {node.name}"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno + 1 <= MAX_FUNCTION_LINES, f"function {node.name}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_dependencies_point_one_way(path):
    layer = layer_of(path)
    if layer == "__init__":
        return
    allowed = MAY_IMPORT[layer] | {layer}
    names = imported(ast.parse(path.read_text()))
    for name in names:
        parts = name.split(".")
        if parts[0] == "hubcache" and len(parts) > 1 and parts[1] != "__version__":
            assert parts[1] in allowed, f"{layer} imports {name}"
    if layer != "hooks":  # only the hooks touch mitmproxy's global context
        assert "mitmproxy.ctx" not in names
    if layer in PURE:
        assert not any(n.split(".")[0] in ("mitmproxy", "lmdb", "socket", "asyncio") for n in names), names
