"""The model API knows methods only through the method-family registry, and the package's layers
import in one direction (import-linter, contracts in .importlinter.toml)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.methods.registry import families

from conftest import require

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adapters"

# the model API: what adding, activating, saving, loading, merging and plugging in models goes through
MODEL_API = [
    "model_mixin.py",
    "forward.py",
    "activation.py",
    "initialize.py",
    "loading.py",
    "hub.py",
    "merging",
    "interface.py",
    "peft_format.py",
    "peft_weight_transforms.py",
    "embeddings.py",
    "static_heads.py",
]


def _model_api_files() -> list[Path]:
    files = []
    for entry in MODEL_API:
        path = PACKAGE / entry
        if path.is_dir():
            files += sorted(path.rglob("*.py"))
        elif path.with_suffix(".py").exists() or path.exists():
            files.append(path if path.suffix else path.with_suffix(".py"))
    return files


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (first statement of a module, class or function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def _imported_modules(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``tree`` (relative ones resolved)."""
    package = module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.append((node.lineno, target))
            names += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]  # from .methods import lora
    return names


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_model_api_files_exist():
    """Guards the list above: a renamed module must not silently drop out of the checks below."""
    files = _model_api_files()
    assert len(files) >= len(MODEL_API)
    assert all(path.is_file() for path in files), files


def test_the_model_api_names_no_method():
    """No method id (a registered family's config ``architecture``) as a string literal outside
    docstrings, and no import of a method family's module: the model API reads the registry."""
    method_ids = {f.name for f in families()}
    family_modules = {f"adapters.methods.{path.stem}" for path in (PACKAGE / "methods").glob("*.py")} - {
        "adapters.methods.__init__", "adapters.methods.registry",
    }
    assert {"lora", "bottleneck", "prefix_tuning", "hra"} <= method_ids
    offenders = []
    for path in _model_api_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstring_nodes(tree)
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in method_ids and id(node) not in docstrings:
                offenders.append(f"{where}:{node.lineno}: method id {node.value!r}")
        for line, name in _imported_modules(tree, _module_name(path)):
            if name in family_modules or any(name.startswith(m + ".") for m in family_modules):
                offenders.append(f"{where}:{line}: imports {name}")
    assert not offenders, "\n".join(offenders)


def test_the_registry_is_the_source_of_the_derived_tables():
    import adapters.methods as methods

    assert methods.METHOD_BLOCKS == {f.name: f.blocks for f in families()}
    assert set(methods.WEIGHT_TRANSFORM_METHODS) == {f.name for f in families() if f.build_linear is not None}
    assert all(f.weight_delta for f in families() if f.build_linear is not None)


def test_import_contracts_hold():
    """The layering of DESIGN.md, checked by import-linter (no contract lists an exception)."""
    require("importlinter")
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint is not None, "import-linter is installed but its lint-imports command is not on PATH"
    config = ROOT / ".importlinter.toml"
    assert "ignore_imports" not in config.read_text(encoding="utf-8")
    result = subprocess.run([lint, str(config)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
