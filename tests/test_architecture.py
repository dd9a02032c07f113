"""The package's layering, checked from its source: no module reaches into another's private names, the
collect package's config loads without jax (``--help`` stays instant), ``completion`` stands alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxforget"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return out


def _package_of(module: str) -> str:
    return module.rpartition(".")[0]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(modules: dict[str, ast.Module]) -> list[str]:
    """``from jaxforget.x import _name``, ``import jaxforget.x._mod`` / ``from jaxforget.x._mod import ...``
    outside jaxforget.x, and ``alias._name`` on an imported jaxforget module, anywhere in the package."""
    found = []
    for module, tree in modules.items():
        aliases = {}  # local name -> imported jaxforget module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxforget"):
                parts = node.module.split(".")
                for i, part in enumerate(parts):
                    owner = ".".join(parts[:i])
                    if _private(part) and not (module == owner or module.startswith(owner + ".")):
                        found.append(f"{module}:{node.lineno} imports the private module {node.module}")
                for a in node.names:
                    if _private(a.name):
                        found.append(f"{module}:{node.lineno} imports {node.module}.{a.name}")
                    elif f"{node.module}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("jaxforget") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and _private(node.attr)):
                found.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names():
    assert private_imports(_modules()) == []


def test_the_check_finds_a_private_import():
    tree = {"jaxforget.a": ast.parse("from jaxforget.b import _hidden\nimport jaxforget.c as c\nc._x()\n"
                                     "from jaxforget.completion._common import mm\n"),
            "jaxforget.c": ast.parse("")}
    assert private_imports(tree) == ["jaxforget.a:1 imports jaxforget.b._hidden",
                                     "jaxforget.a:4 imports the private module jaxforget.completion._common",
                                     "jaxforget.a:3 uses jaxforget.c._x"]


def test_completion_depends_on_jax_and_numpy_only():
    allowed = {"jax", "numpy", "optax", "jaxforget"}
    for module, tree in _modules().items():
        if not module.startswith("jaxforget.completion"):
            continue
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, f"{module} imports {name}"
                if top == "jaxforget":
                    assert name.startswith("jaxforget.completion"), f"{module} imports {name}"


@pytest.mark.parametrize("code", [
    "import jaxforget.collect.config, jaxforget.collect",
    "from jaxforget.collect import CollectConfig, check_config",
])
def test_collect_config_and_help_do_not_load_jax(code):
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint('jax' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_collect_help_names_the_command():
    out = subprocess.run([sys.executable, "-m", "jaxforget.collect", "--help"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.startswith("usage: python -m jaxforget.collect ")


def test_importing_any_module_leaves_the_xla_backend_uninitialised():
    # `collect --distributed` must call jax.distributed.initialize() before any JAX computation: a module-level
    # jnp constant anywhere in the package would start the backend at import and break every multi-process run
    import subprocess
    import sys

    code = ("import importlib, pkgutil, jaxforget\n"
            "for m in pkgutil.walk_packages(jaxforget.__path__, 'jaxforget.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n"
            "from jax._src import xla_bridge\n"
            "print(xla_bridge.backends_are_initialized())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
