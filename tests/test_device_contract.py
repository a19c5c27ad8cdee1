"""One copy of the device contract: edge/ is an installed package that imports nothing of mineralnet, TensorFlow,
Keras or JAX (the device has none of them), and mineralnet takes the decoding, the reject rule and the drift
reference from it instead of keeping its own."""

import ast
import os
import subprocess
import sys

from helpers import REPO

EDGE = os.path.join(REPO, "edge")
FORBIDDEN = ("mineralnet", "tensorflow", "keras", "tf_keras", "jax")


def edge_modules():
    """{dotted name: file} of every module of the edge package, found by its files."""
    modules = {}
    for folder, _, files in os.walk(EDGE):
        if not os.path.isfile(os.path.join(folder, "__init__.py")):
            continue
        package = os.path.relpath(folder, REPO).replace(os.sep, ".")
        for name in sorted(files):
            if name.endswith(".py"):
                modules[package if name == "__init__.py" else f"{package}.{name[:-3]}"] = os.path.join(folder, name)
    return modules


def test_no_edge_file_imports_mineralnet_or_tensorflow():
    """Read, not run: an import inside a function (a driver's library, say) counts too."""
    found = []
    for module, path in edge_modules().items():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{module}: {name}" for name in names if name.split(".")[0] in FORBIDDEN]
    assert len(edge_modules()) > 10 and found == []


def test_every_edge_module_imports_with_mineralnet_and_tensorflow_blocked():
    """Run, in a fresh interpreter from outside the checkout: edge is found as an installed package, and no module
    of it reaches a blocked one through another library either."""
    script = (
        "import importlib, importlib.abc, sys\n"
        "class Blocked(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {FORBIDDEN!r}:\n"
        "            raise ImportError(f'{name} is blocked: edge/ must not import it')\n"
        "sys.meta_path.insert(0, Blocked())\n"
        f"for module in {sorted(edge_modules())!r}:\n"
        "    importlib.import_module(module)\n"
        "import edge\n"
        "print(edge.__file__)\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(REPO), capture_output=True, text=True,
                          env=environment, timeout=120)
    assert "No module named 'edge'" not in done.stderr, "edge is not installed: pip install -e . in the checkout"
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == os.path.join(EDGE, "__init__.py")


def test_mineralnet_decodes_rejects_and_references_with_edge_code():
    from edge import decision, drift, preprocess
    from mineralnet import conformal
    from mineralnet.data import images

    for name in ("open_rgb", "resize_rgb", "to_rgb", "to_srgb", "DECODE_METHOD", "RESIZE_METHOD", "IMAGE_EXTENSIONS"):
        assert getattr(images, name) is getattr(preprocess, name), name
    assert conformal.class_cutoffs is decision.class_cutoffs and conformal.sorted_mask is decision.sorted_mask
    assert conformal.make_reference is drift.make_reference
