"""The run and model metadata each have one home: the run directory's file names in mineralnet/rundir.py, the
training options of a run in its typed TrainConfig (old config.json files included), and no import circle in
mineralnet or edge (read from the source, no TensorFlow)."""

import ast
import os

import pytest

from helpers import REPO

PACKAGE = os.path.join(REPO, "mineralnet")


def modules(package=PACKAGE):
    """{dotted module name: parsed source} of every module of a package of the repository (default mineralnet)."""
    found = {}
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], REPO).replace(os.sep, ".").removesuffix(".__init__")
                with open(path) as handle:
                    found[dotted] = (path, ast.parse(handle.read()))
    return found


def imported_modules(dotted, path, tree, known):
    """The package's modules `tree` imports anywhere (inside functions too), each as the longest known name."""
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


@pytest.mark.parametrize("package", ["mineralnet", "edge"])
def test_no_import_circle(package):
    known = modules(os.path.join(REPO, package))
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


# config.json as the first versions wrote it (git 7261daa): no mixup, cutmix, ema, tta, init_from ..., a three-part
# split, and `teacher`, an option removed since.
OLD_CONFIG = {
    "data": None, "demo": False, "out": "runs/train", "model": "simple_cnn", "weights": "none", "image_size": 32,
    "epochs": 3, "batch_size": 8, "lr": 0.001, "warmup_epochs": 0, "label_smoothing": 0.1, "dropout": 0.0,
    "freeze_epochs": 0, "seed": 4, "split": None, "split_ratios": "6:2:2", "limit_per_class": None,
    "class_weights": True, "mixed_precision": "off", "strategy": "auto", "cpu_devices": 1,
    "augment": {"flip": True, "rotation": 0.2}, "evaluate": True, "teacher": None,
}


def test_an_old_config_json_loads_into_the_typed_train_config(tmp_path):
    from mineralnet.rundir import Run
    from mineralnet.training import DEFAULTS, TrainConfig
    from mineralnet.utils import write_json

    write_json(str(tmp_path / "config.json"), dict(OLD_CONFIG, data=str(tmp_path)))
    run = Run(tmp_path, required=())
    config = run.train_config
    assert isinstance(config, TrainConfig) and run.image_size == 32
    assert (config.data, config.model, config.batch_size, config.seed, config.split_ratios) == (
        str(tmp_path), "simple_cnn", 8, 4, "6:2:2")
    assert (config.label_smoothing, config.class_weights, config.augment.rotation) == (0.1, True, 0.2)
    assert config.augment.zoom == DEFAULTS["augment"]["zoom"]  # augmentation options added since: their defaults
    assert (config.mixup, config.cutmix, config.tta, config.init_from, config.progressive_sizes) == (
        0.0, 0.0, False, None, ())  # options added since: their defaults
    assert "teacher" not in config.to_dict()


def test_an_ensemble_config_json_loads_and_one_without_image_size_names_the_fix(tmp_path):
    """An ensemble's config.json holds only what its tools read, and its members; a config.json without the input
    size (or the data) is refused in one line naming the file."""
    import pytest

    from mineralnet.rundir import Run, RunError
    from mineralnet.utils import write_json

    write_json(str(tmp_path / "config.json"), {"model": "ensemble", "members": ["a", "b"], "member_models":
                                               ["simple_cnn", "simple_cnn"], "data": str(tmp_path), "image_size": 48})
    config = Run(tmp_path, required=()).train_config
    assert (config.model, config.data, config.image_size) == ("ensemble", str(tmp_path), 48)
    write_json(str(tmp_path / "config.json"), {"model": "simple_cnn", "data": str(tmp_path)})
    with pytest.raises(RunError, match=r"config.json' lacks the option\(s\) image_size: restore it") as error:
        Run(tmp_path, required=()).image_size
    assert "\n" not in str(error.value)
    write_json(str(tmp_path / "config.json"), {"data": str(tmp_path), "image_size": "big"})
    with pytest.raises(RunError, match="image_size' must be a whole number"):
        Run(tmp_path, required=()).train_config
