"""The import direction: app -> core -> kernels, and a light `import pd_fast`.

Each check runs in a fresh interpreter, so what it sees in `sys.modules` is what the import
itself loaded. Run one by hand with `python -m pytest tests/app/test_imports.py -v`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = (
    "pd_fast",
    "pd_fast.schedules",
    "pd_fast.parameterizations",
    "pd_fast.sampling",
    "pd_fast.distillation",
    "pd_fast._backend",
)
# torch itself loads torch.distributed on import, so that one is checked as "loaded by us beyond torch"
HEAVY = ("safetensors", "sklearn", "matplotlib", "diffusers", "torch.distributed", "torch.nn.parallel")


def _new_modules(statement: str) -> list[str]:
    """Modules that `statement` loads on top of `import torch, numpy, tqdm`, in a fresh interpreter."""
    code = (
        "import sys, json, torch, numpy, tqdm.auto\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_neither_app_nor_heavy_dependencies(module):
    new = _new_modules(f"import {module}")
    assert not [m for m in new if m.startswith("pd_fast.app")], f"{module} imports the app layer"
    assert not [m for m in new if m.startswith("pd_ref")], f"{module} imports pd_ref at run time"
    assert not [m for m in new if m.split(".")[0] == "triton"], f"{module} imports triton eagerly"
    heavy = [m for m in new if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert not heavy, f"{module} imports {heavy}"


def test_kernels_import_only_torch_triton_and_each_other():
    """pd_fast/kernels/ is Triton only: its modules import torch, triton, the standard library and
    their siblings (relative imports one level deep), never the core, the app or pd_ref."""
    allowed_roots = {"torch", "triton", "__future__"} | set(sys.stdlib_module_names)
    for path in sorted((ROOT / "pd_fast" / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    continue  # a sibling kernels module
                assert node.level == 0, f"{path.name} imports from outside pd_fast/kernels"
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed_roots, f"{path.name} imports {sorted(roots - allowed_roots)}"


def test_app_names_load_lazily_from_the_package():
    new = _new_modules("import pd_fast\nassert callable(pd_fast.train_teacher)")
    assert "pd_fast.app.training" in new
    assert "pd_fast.app.models" not in new  # only the module that defines the name
