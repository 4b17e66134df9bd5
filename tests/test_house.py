"""The shape of the package: imports point down (no cycles), modules stay small, one naming and option checks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tinymodels

from onnxdtype.build import quantize
from onnxdtype.errors import OnnxDtypeError

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "onnxdtype"
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package this file imports, at any depth (function-level too), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:  # `from onnxdtype.recipes import static` names the module static, not the package
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_imports_have_no_cycles():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(files)) - {name} for name, path in files.items()}
    for name in graph:  # a package's __init__ importing its own modules is how packages export; not an edge back
        graph[name] = {m for m in graph[name] if not (files[name].name == "__init__.py" and m.startswith(name + "."))}
    for name in graph:  # a module importing its own package (its __init__) reaches its siblings only through it
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_no_module_does_twelve_jobs():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("bad, message", [
    ({"q8": {"weight_type": "unit8"}}, "q8 weight_type 'unit8' is not valid"),
    ({"bnb4": {"quant_type": "nf5"}}, "bnb4 quant_type 'nf5' is not valid"),
    ({"q4": {"block_size": 48}}, "q4 block_size must be a power of two"),
    ({"static": {"float_tail": "no"}}, "static float_tail must be true or false"),
    ({"q4": {"blocksize": 64}}, "no option blocksize"),
    ({"nonsense": {"a": 1}}, "neither a dtype nor a recipe"),
])
def test_options_refuse_bad_values_from_the_api_and_the_cli_alike(tmp_path, bad, message):
    model = tinymodels.save(tinymodels.mlp(), tmp_path / "mlp.onnx")
    with pytest.raises(OnnxDtypeError, match=message):
        quantize(model, "all", tmp_path / "api", options=bad, latency_runs=0)
    assert not (tmp_path / "api").exists() or not any((tmp_path / "api").iterdir())
    from typer.testing import CliRunner

    from onnxdtype.cli import app

    (key, fields), = bad.items()
    (field, value), = fields.items()
    text = str(value).lower() if isinstance(value, bool) else str(value)
    run = CliRunner().invoke(app, ["quantize", str(model), "-o", str(tmp_path / "cli"), "--set", f"{key}.{field}={text}"])
    assert run.exit_code == 2 and message in " ".join(run.output.split()), run.output
