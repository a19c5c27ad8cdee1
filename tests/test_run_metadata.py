"""The run and model metadata each have one home: the run directory's file names in mineralnet/rundir.py, the
training options of a run in its typed TrainConfig (old config.json files included), and no import circle in
mineralnet (read from the source, no TensorFlow)."""

import ast
import os

from helpers import REPO

PACKAGE = os.path.join(REPO, "mineralnet")


def modules():
    """{dotted module name: parsed source} of every module of the mineralnet package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], REPO).replace(os.sep, ".").removesuffix(".__init__")
                with open(path) as handle:
                    found[dotted] = (path, ast.parse(handle.read()))
    return found


def imported_modules(dotted, path, tree, known):
    """The mineralnet modules `tree` imports anywhere (inside functions too), each as the longest known name."""
    package = dotted if path.endswith("__init__.py") else dotted.rpartition(".")[0]
    targets = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets += [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != dotted:
            found.add(target)
    return found


def test_no_import_circle_in_mineralnet():
    known = modules()
    graph = {name: imported_modules(name, path, tree, known) for name, (path, tree) in known.items()}

    def circle_from(start):
        """A path start -> ... -> start, or None (depth-first)."""
        stack, seen = [(start, [start])], set()
        while stack:
            name, path = stack.pop()
            for following in graph[name]:
                if following == start:
                    return path + [start]
                if following not in seen:
                    seen.add(following)
                    stack.append((following, path + [following]))
        return None

    circles = [circle for circle in map(circle_from, sorted(graph)) if circle]
    assert not circles, " ; ".join(" -> ".join(circle) for circle in circles)


def test_only_rundir_spells_the_run_directory_file_names():
    """Evaluation and export write report.json, model_<format>.tflite, ... under the names rundir.py gives."""
    from mineralnet import rundir

    names = {value for key, value in vars(rundir).items() if key.isupper() and isinstance(value, str)
             and "." in value} | {rundir.tflite_name("float32"), rundir.sidecar_name("float32")}
    assert {"report.json", "report.md", "confusion_matrix.png", "labels.txt", "config.json"} <= names
    spelled = []
    for dotted, (path, tree) in modules().items():
        if dotted == "mineralnet.rundir":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.append(f"{dotted}:{node.lineno} {node.value}")
            if isinstance(node, ast.JoinedStr) and any(  # f"model_{fmt}.tflite" and its like
                    isinstance(part, ast.Constant) and str(part.value).startswith("model_") for part in node.values):
                spelled.append(f"{dotted}:{node.lineno} f-string model_...")
    assert not spelled, spelled
