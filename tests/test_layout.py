"""The package's shape: sub-packages in layers with one dependency direction, and the part the
Blender extension vendors importing with numpy and pyzmq alone."""

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "backend" / "pipstrack"
# Each layer may import the layers before it, never one after it.
LAYERS = ("conventions", "wire", "io", "engine", "datasets", "evaluation", "training", "service", "cli")
VENDORED = ("conventions", "wire.protocol", "wire.client", "io.formats", "io.export")


def layer_of(module: str) -> str | None:
    """'pipstrack.engine.tracker' -> 'engine'; the package's own __init__/__main__ -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def internal_imports(path: Path) -> set[str]:
    """Every pipstrack module ``path`` imports, at module level or inside functions."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    here = list(rel.parts if rel.name != "__init__" else rel.parts[:-1])
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "pipstrack":
                continue
            found.add(target)
            for alias in node.names:  # from . import protocol: a module too
                found.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pipstrack"}
    return found


def test_layers_import_only_downwards():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        mine = layer_of(mod)
        if mine is None:
            continue  # pipstrack/__init__ (the public API) and __main__ sit above every layer
        for target in internal_imports(path):
            theirs = layer_of(target)
            if target == "pipstrack" or target == "pipstrack.__version__":
                continue  # the version string
            if theirs is None:
                if (PACKAGE / (target.split(".", 1)[1].replace(".", "/") + ".py")).exists():
                    wrong.append(f"{mod} imports {target}, which is in no layer")
                continue
            if LAYERS.index(theirs) > LAYERS.index(mine):
                wrong.append(f"{mod} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_every_module_sits_in_a_layer():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "conventions"]
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(
        [*LAYERS[1:], "data"]
    )


BLOCKER = """
import importlib.abc, json, sys
HEAVY = ("torch", "cv2", "bpy", "OpenEXR", "skimage", "tqdm", "pipstrack", "scipy")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{name} is not available here")
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
import importlib
for mod in json.loads(sys.argv[2]):
    importlib.import_module("_pipstrack." + mod)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_what_the_extension_vendors_imports_with_numpy_and_pyzmq_alone(extension_zip, tmp_path):
    with zipfile.ZipFile(extension_zip) as z:
        z.extractall(tmp_path)
    assert sorted(n for n in zipfile.ZipFile(extension_zip).namelist() if n.startswith("_pipstrack/")) == sorted(
        ["_pipstrack/__init__.py", "_pipstrack/wire/__init__.py", "_pipstrack/io/__init__.py"]
        + [f"_pipstrack/{m.replace('.', '/')}.py" for m in VENDORED]
    )
    r = subprocess.run(
        [sys.executable, "-c", BLOCKER, str(tmp_path), json.dumps(VENDORED)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout))
    assert {"numpy", "zmq", "_pipstrack"} <= loaded


@pytest.mark.parametrize(
    "module",
    [
        "pipstrack.engine.tracker",
        "pipstrack.engine.refine",
        "pipstrack.wire.client",
        "pipstrack.io.frames",
        "pipstrack",
    ],
)
def test_lower_layers_load_without_the_service_or_the_command_line(module):
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(r.stdout)
    assert not [m for m in loaded if m.startswith(("pipstrack.service", "pipstrack.cli"))]
    if module in ("pipstrack", "pipstrack.wire.client"):  # the public API is lazy; the client never needs torch
        assert "torch" not in loaded and not [m for m in loaded if m.startswith("pipstrack.engine")]


@pytest.mark.parametrize("argv", [["--help"], ["track", "--help"], ["serve", "--help"], ["eval", "--help"]])
def test_the_command_lines_help_loads_no_heavy_library(argv):
    """``pipstrack --help`` starts in a fraction of a second (docs/performance.md, Start-up): the
    commands import torch, OpenCV and the rest only when they run."""
    code = (
        "import json, sys\nfrom pipstrack.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    loaded = json.loads(r.stderr.strip().splitlines()[-1])
    assert "usage: pipstrack" in r.stdout
    heavy = [m for m in loaded if m.split(".")[0] in ("torch", "cv2", "scipy", "skimage", "bpy", "OpenEXR", "tqdm")]
    assert not heavy, heavy[:5]
