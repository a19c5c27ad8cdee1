"""`import mineralnet`, `train.py --help` and argument errors import no TensorFlow (seconds of start-up); the paths
that need it still start it quietly and still find mineralnet's Keras classes when loading a saved model."""

import json
import os
import subprocess
import sys

from helpers import REPO


def python(*args, env=None):
    """Run python with `args` in the repo (this checkout first on the path); the finished process."""
    environment = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=environment)


def run_train_py(*args):
    """`python train.py ARGS`; the finished process, its stdout's last line saying whether TensorFlow was imported
    by the end (sys.modules at exit: -X importtime lines would vanish with the stderr hidden during TF's start)."""
    script = ("import atexit, runpy, sys\n"
              "atexit.register(lambda: print('tensorflow' in sys.modules, 'keras' in sys.modules))\n"
              f"sys.argv = ['train.py', *{list(args)!r}]\n"
              "runpy.run_path('train.py', run_name='__main__')\n")
    return python("-c", script)


def test_import_mineralnet_and_list_models_do_not_import_tensorflow():
    done = python("-c", "import sys, mineralnet, mineralnet.training\n"
                        "print(mineralnet.list_models(), 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("False False")
    assert "eca_convnext_tiny" in done.stdout and "simple_cnn" in done.stdout


def test_help_and_argument_errors_do_not_import_tensorflow(tmp_path):
    done = run_train_py("--help")
    assert done.returncode == 0 and "--init-from" in done.stdout and "eca_resnet18" in done.stdout
    assert done.stdout.splitlines()[-1] == "False False"
    for bad in (["--demo", "--lr", "-1"], ["--demo", "--epochs", "many"], ["--demo", "--mixed-precision", "fp8"],
                ["--data", str(tmp_path), "--warmup-epochs", "9", "--epochs", "3"]):
        done = run_train_py("--out", str(tmp_path / "run"), *bad)
        assert done.returncode == 2 and "error:" in done.stderr and "Traceback" not in done.stderr, bad
        assert done.stdout.splitlines()[-1] == "False False", bad
    assert not os.path.exists(tmp_path / "run")


def test_tensorflow_start_up_noise_stays_hidden():
    """Building a model imports TensorFlow through mineralnet._tf: nothing on stderr (TensorFlow alone prints its
    oneDNN and CUDA lines even at TF_CPP_MIN_LOG_LEVEL=2)."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", "import mineralnet\n"
                           "print(mineralnet.build_model('simple_cnn', 2, (32, 32, 3)).count_params())"],
                          cwd=REPO, capture_output=True, text=True, env=dict(environment, PYTHONPATH=REPO))
    assert done.returncode == 0 and int(done.stdout.split()[-1]) > 0, done.stderr
    assert done.stderr == ""


def test_every_listed_model_is_registered_by_its_module():
    """registry._MODULES (names known without TensorFlow) and the modules' @register agree."""
    done = python("-c", "import json\nfrom mineralnet.models import registry\n"
                        "listed = registry.list_models()\nregistry.register_all()\n"
                        "print(json.dumps([listed, sorted(registry._BUILDERS)]))")
    listed, registered = json.loads(done.stdout.strip().splitlines()[-1])
    assert listed == registered and len(listed) == 10


def test_a_saved_model_loads_through_the_run_in_a_fresh_process(tmp_path):
    """Run.load_model registers mineralnet's Keras classes itself (ECA here); nothing else imported first."""
    build = ("import mineralnet, numpy as np\n"
             "m = mineralnet.build_model('eca_resnet18', 3, (32, 32, 3))\n"
             f"m.save(r'{tmp_path / 'model.keras'}')\n"
             f"np.save(r'{tmp_path / 'y.npy'}', m.predict(np.full((1, 32, 32, 3), 100.0), verbose=0))\n")
    assert python("-c", build).returncode == 0
    for name, text in (("config.json", '{"image_size": 32}'), ("labels.json", '["a", "b", "c"]'),
                       ("split.csv", "path,label,subset\n")):
        (tmp_path / name).write_text(text)
    load = ("import sys, numpy as np\nfrom mineralnet.rundir import Run\n"
            f"m = Run(r'{tmp_path}').load_model()\n"
            "p = m.predict(np.full((1, 32, 32, 3), 100.0), verbose=0)\n"
            f"print(float(np.abs(p - np.load(r'{tmp_path / 'y.npy'}')).max()))")
    done = python("-c", load)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) < 1e-6
