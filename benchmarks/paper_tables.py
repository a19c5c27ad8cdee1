"""The paper's model comparison (tables 4 and 5, figs. 4-6) redone on MINET-7 with the project's own training
loop: every registry model trained on one split.csv (6:2:2, fixed seed), same augmentation, same budget.

    python benchmarks/paper_tables.py                      # CPU budget: 64 px, 6 epochs, batch 16 (~1 h, 2 cores)
    python benchmarks/paper_tables.py --full               # the paper's settings: 224 px, batch 32, 200 epochs (GPU)
    python benchmarks/paper_tables.py --smoke --out DIR    # 2 models, 1 epoch, 32 px, 6 images a class
    python benchmarks/paper_tables.py --weights PATH       # adds table 5's transfer rows (ConvNeXt-Tiny backbone)

Runs go to runs/paper/<budget|full|smoke>/<run>/ (train.py run directories). Rerun the same command after a
kill: a run with eval/report.json is kept, an unfinished one resumes from its last epoch. Then writes, into --out
(benchmarks/results/minet/): table4.md, table5.md, curves.png, confusion_matrix.png, gradcam.png, README.md.

The CPU budget, measured (benchmarks/results/minet/README.md): all seven models at 64 px for 6 epochs took
51 minutes of training and 57 minutes in all on the two-core CPU, ConvNeXt-Tiny and ECA-ConvNeXt-Tiny ~60 % of
it. 96 px and 10 epochs would take about 3.7x that (~3.5 h), over the two hours a CPU run should fit in; ConvNeXt's
depthwise 7x7 convolutions and LayerNorms are what the CPU is slow at.
"""

import argparse
import csv
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mineralnet._tf import import_tensorflow  # noqa: E402

import_tensorflow()  # its start-up lines hidden, as in the package's own tools
import keras  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mineralnet import rundir  # noqa: E402
from mineralnet.data import load_image, make_split, read_split, scan_dataset, write_split  # noqa: E402
from mineralnet.data.pipeline import AugmentConfig  # noqa: E402
from mineralnet.gradcam import gradcam_heatmaps, overlay  # noqa: E402
from mineralnet.models import list_models  # noqa: E402
from mineralnet.plots import plt, save_figure  # noqa: E402
from mineralnet.training import DEFAULTS, resolve_config, train  # noqa: E402
from mineralnet.utils import atomic_write_text, read_json, write_json  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "minet_512")
DEFAULT_PAPER = os.path.join(os.path.dirname(REPO), "shared", "seeds", "001_1a1c8f790cf7c18f.txt")
PAPER_ORDER = ("vgg19", "googlenet", "resnet50", "resnext50", "convnext_tiny", "eca_convnext_tiny")
PRESETS = {
    "budget": {"image_size": 64, "epochs": 6, "batch_size": 16, "limit_per_class": None, "models": None},
    "full": {"image_size": 224, "epochs": 200, "batch_size": 32, "limit_per_class": None, "models": None},
    "smoke": {"image_size": 32, "epochs": 1, "batch_size": 8, "limit_per_class": 6,
              "models": ["simple_cnn", "eca_convnext_tiny"]},
}
SPLIT_RATIOS, SEED = "6:2:2", 0
# Our run -> the paper's row name (its text, tables 4 and 5); 本文模型 = "this paper's model".
PAPER_TABLE4_ROWS = {"vgg19": "VGG19", "googlenet": "GoogLeNet", "resnet50": "ResNet50", "resnext50": "ResNeXt50",
                     "convnext_tiny": "ConvNeXt", "eca_convnext_tiny": "本文模型"}
ABLATION = (  # table 5: (label, run name, paper row)
    ("ConvNeXt-Tiny", "convnext_tiny", "ConvNeXt"),
    ("+ECA", "eca_convnext_tiny", "ECA +ConvNeXt"),
    ("+transfer", "convnext_tiny_transfer", "迁移学习+ConvNeXt"),
    ("+ECA+transfer", "eca_convnext_tiny_transfer", "本文模型"),
)
CHECKED_FIELDS = ("model", "weights", "image_size", "epochs", "batch_size", "seed", "limit_per_class", "augment",
                  "lr", "data", "split")
GRADCAM_CLASSES = 5
PAPER_GRADCAM_CLASSES = ("bornite", "hematite", "olivine", "molybdenite", "quartz")  # fig. 6's rows


class BenchmarkError(RuntimeError):
    """A state of the runs directory that would mix results of different settings."""


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--full", action="store_true", help="the paper's settings (224 px, batch 32, 200 epochs)")
    preset.add_argument("--smoke", action="store_true", help="2 models, 1 epoch, 32 px, 6 images a class")
    parser.add_argument("--data", default=DEFAULT_DATA, help="class-folder dataset (default ../shared/data/minet_512)")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "minet"), help="results folder")
    parser.add_argument("--runs", help="run directories (default runs/paper/<budget|full|smoke>)")
    parser.add_argument("--weights", help="ConvNeXt-Tiny backbone weights (PATH or imagenet) for the transfer rows")
    parser.add_argument("--models", help="comma-separated registry models (default: all)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--limit-per-class", type=int)
    parser.add_argument("--paper", default=DEFAULT_PAPER, help="the paper's text, for its table 4 and 5 figures")
    args = parser.parse_args(argv)
    args.preset = "full" if args.full else "smoke" if args.smoke else "budget"
    settings = dict(PRESETS[args.preset])
    for key in ("image_size", "epochs", "batch_size", "limit_per_class"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    registered = list_models()
    chosen = args.models.split(",") if args.models else settings["models"] or registered
    unknown = sorted(set(chosen) - set(registered))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(registered)}.")
    settings["models"] = [m for m in PAPER_ORDER if m in chosen] + sorted(set(chosen) - set(PAPER_ORDER))
    if not os.path.isdir(args.data):
        parser.error(f"data directory '{args.data}' does not exist: pass --data with one sub-folder per class.")
    args.data = os.path.abspath(args.data)
    if args.weights and args.weights != "imagenet":
        if not os.path.isfile(args.weights):
            parser.error(f"weights file '{args.weights}' does not exist: pass a ConvNeXt-Tiny backbone .weights.h5.")
        args.weights = os.path.abspath(args.weights)
    args.runs = os.path.abspath(args.runs or os.path.join(REPO, "runs", "paper", args.preset))
    return args, settings


def planned_runs(settings, weights):
    """(run name, model, weights): every chosen model from scratch, plus the ConvNeXt transfer runs."""
    runs = [(model, model, "none") for model in settings["models"]]
    if weights:
        runs += [(f"{model}_transfer", model, weights) for model in ("convnext_tiny", "eca_convnext_tiny")
                 if model in settings["models"]]
    return runs


def prepare_split(args, settings):
    """The one split.csv every run trains on; an existing one must be the same split (else results would mix)."""
    _, samples, _ = scan_dataset(args.data, settings["limit_per_class"], SEED)
    rows = make_split(samples, SPLIT_RATIOS, SEED)
    path = os.path.join(args.runs, rundir.SPLIT)
    if os.path.exists(path):
        same = ("path", "label", "subset")  # the hash is checked when the rows are read
        if [{k: r[k] for k in same} for r in read_split(path)] != [{k: r[k] for k in same} for r in rows]:
            raise BenchmarkError(f"'{path}' holds another split (other data or image limit): pass another --runs.")
    else:
        write_split(rows, path)
    return path


def train_all(args, settings, split_path):
    """Train each planned run unless finished; wall time per run accumulates in RUNS/timings.json."""
    timings_path = os.path.join(args.runs, "timings.json")
    timings = read_json(timings_path) if os.path.exists(timings_path) else {}
    for name, model, weights in planned_runs(settings, args.weights):
        path = os.path.join(args.runs, name)
        config = resolve_config(overrides={
            "data": args.data, "out": path, "model": model, "weights": weights, "split": split_path, "seed": SEED,
            **{k: settings[k] for k in ("image_size", "epochs", "batch_size", "limit_per_class")},
        })
        resume = os.path.exists(os.path.join(path, rundir.CONFIG))
        if resume:
            # Both typed: options added since that run was made take their defaults on both sides.
            saved = rundir.Run(path, required=()).train_config
            changed = [k for k in CHECKED_FIELDS if getattr(saved, k) != getattr(config, k)]
            if changed:
                raise BenchmarkError(f"run '{path}' was made with other {', '.join(changed)}: pass another --runs.")
        if os.path.exists(os.path.join(path, rundir.EVAL_DIR, rundir.REPORT)):
            print(f"{name}: finished, kept", flush=True)
            continue
        print(f"{name}: {'resuming' if resume else 'training'} {model} at {settings['image_size']} px, "
              f"{settings['epochs']} epochs", flush=True)
        started = time.time()
        try:
            train(config, resume=resume)
        finally:
            timings[name] = round(timings.get(name, 0.0) + time.time() - started, 1)
            write_json(timings_path, timings)
            keras.backend.clear_session()
    return timings


def paper_table(text, number):
    """{row name: [numbers]} of table `number` of the paper: the tab-separated rows after its English caption,
    percent and 'M' signs dropped."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"Table {number} "))
    rows = {}
    for line in lines[start + 1:]:
        if "\t" in line:
            name, *cells = [cell.strip() for cell in line.split("\t")]
            rows[name] = cells
        elif rows:
            break
    header = next(iter(rows))
    return {name: [float(c.rstrip("%M")) for c in cells] for name, cells in rows.items() if name != header}


def collect(args, settings):
    """Per finished run: its test report, history, parameter count and loaded model."""
    results = {}
    for name, _, _ in planned_runs(settings, args.weights):
        run = rundir.Run(os.path.join(args.runs, name))
        with open(run.file(rundir.HISTORY)) as handle:
            history = list(csv.DictReader(handle))
        model = run.load_model()
        results[name] = {
            "run": run, "model": model, "history": history, "params": model.count_params(),
            "report": read_json(os.path.join(run.eval_dir(), rundir.REPORT)),
        }
    return results


def percent(value):
    return f"{100 * value:.2f}"


def table4(results, paper, settings, test_images):
    lines = [
        "# Table 4: test results per model on MINET-7", "",
        f"Test subset of the shared split ({test_images} images), {settings['image_size']} px, epochs "
        f"{settings['epochs']}, batch {settings['batch_size']}, no pretrained weights; macro averages. The "
        "paper's figures are on its own 26-class data set (34,576 images) at 224 px for 200 epochs, and its "
        "ECA-ConvNeXt (本文模型) used ImageNet transfer learning: reference, not a like-for-like comparison.", "",
        "| model | accuracy (%) | precision (%) | recall (%) | paper row | paper accuracy (%) | paper precision (%) "
        "| paper recall (%) |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name in settings["models"]:
        report = results[name]["report"]
        row = PAPER_TABLE4_ROWS.get(name)
        theirs = paper.get(row) if paper and row else None
        cells = [row, *(f"{v:.2f}" for v in theirs)] if theirs else ["—"] * 4
        lines.append(f"| {name} | {percent(report['accuracy'])} | {percent(report['precision_macro'])} | "
                     f"{percent(report['recall_macro'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table5(results, paper, weights):
    lines = [
        "# Table 5: ablation of ConvNeXt-Tiny (ECA, transfer learning) on MINET-7", "",
        "Parameters in millions; size = the weights as float32 in MiB, the paper's measure (its 27.84M parameters "
        "are its 106.27 MB). "
        + (f"Transfer rows start from the backbone weights `{weights}`. " if weights else
           "Transfer rows need pretrained weights (--weights PATH); none were given. ")
        + "Paper columns: its 26-class data set.", "",
        "| model | params (M) | size (MB) | accuracy (%) | precision (%) | recall (%) | paper params (M) "
        "| paper size (MB) | paper accuracy (%) | paper precision (%) | paper recall (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, name, paper_row in ABLATION:
        theirs = (paper or {}).get(paper_row)
        paper_cells = " | ".join(f"{v:.2f}" for v in theirs) if theirs else " | ".join(["—"] * 5)
        if name in results:
            params, report = results[name]["params"], results[name]["report"]
            ours = (f"{params / 1e6:.2f} | {params * 4 / 2**20:.2f} | {percent(report['accuracy'])} | "
                    f"{percent(report['precision_macro'])} | {percent(report['recall_macro'])}")
        else:
            transfer = name.endswith("_transfer")
            reason = "no pretrained weights available" if transfer and not weights else "model not in --models"
            ours = f"not run: {reason} | | | |"
        lines.append(f"| {label} | {ours} | {paper_cells} |")
    return "\n".join(lines) + "\n"


def plot_validation_curves(results, path, image_size):
    """Fig. 4: validation accuracy per epoch, every run on one axis."""
    figure, axis = plt.subplots(figsize=(8, 5))
    for name, result in results.items():
        history = result["history"]
        axis.plot([int(r["epoch"]) for r in history], [float(r["val_accuracy"]) for r in history], marker="o",
                  markersize=3, label=name)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy")
    axis.set_ylim(0, 1)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_title(f"MINET-7 validation accuracy per epoch ({image_size} px)")
    axis.grid(alpha=0.3)
    axis.legend()
    save_figure(figure, path)


def gradcam_examples(run, count):
    """The first test image (by path) of `count` classes, fig. 6's minerals first where MINET-7 has them."""
    rows = sorted(run.rows("test"), key=lambda r: r["path"])
    present = sorted({r["label"] for r in rows})
    classes = [c for c in PAPER_GRADCAM_CLASSES if c in present]
    classes = (classes + [c for c in present if c not in classes])[:count]
    return [next(r for r in rows if r["label"] == label) for label in classes]


def plot_gradcam_grid(results, path, display_size=160):
    """Fig. 6: rows = classes, columns = the photo then each run's Grad-CAM of its predicted class."""
    first = next(iter(results.values()))["run"]
    examples = gradcam_examples(first, GRADCAM_CLASSES)
    photos = [load_image(row["file"], display_size) for row in examples]
    columns = len(results) + 1
    figure, axes = plt.subplots(len(examples), columns, figsize=(1.7 * columns, 1.9 * len(examples)), squeeze=False)
    for row, (example, photo) in enumerate(zip(examples, photos)):
        axes[row, 0].imshow(photo)
        axes[row, 0].set_title(example["label"], fontsize=8)
    for column, (name, result) in enumerate(results.items(), start=1):
        run = result["run"]
        pixels = np.stack([load_image(r["file"], run.image_size) for r in examples])
        heatmaps, probabilities = gradcam_heatmaps(result["model"], pixels)
        for row, (example, heatmap, probs) in enumerate(zip(examples, heatmaps, probabilities)):
            predicted = run.labels[int(np.argmax(probs))]
            axes[row, column].imshow(overlay(photos[row], heatmap))
            axes[row, column].set_title(f"{name}\n{predicted}" if row == 0 else predicted, fontsize=7,
                                        color="green" if predicted == example["label"] else "red")
    for axis in axes.flat:
        axis.axis("off")
    figure.suptitle("Grad-CAM of the predicted class (green: correct, red: wrong)", fontsize=9)
    save_figure(figure, path)


def machine():
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    import tensorflow as tf

    gpus = [gpu.name for gpu in tf.config.list_physical_devices("GPU")]
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPU cores, GPU: "
            f"{', '.join(gpus) or 'none'}; TensorFlow {tf.__version__}, Keras {keras.__version__}")


def commit():
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown (not a git checkout)"
    return head + (" with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def readme(argv, args, settings, results, timings, best):
    split = read_split(os.path.join(args.runs, rundir.SPLIT))
    counts = {s: sum(r["subset"] == s for r in split) for s in ("train", "val", "test")}
    data = os.path.relpath(args.data, REPO)
    lines = [
        "# MINET-7: the paper's tables and figures, reproduced", "",
        "Made by `benchmarks/paper_tables.py` (see its docstring); rerun the same command to reproduce or resume.", "",
        f"- Command: `{shlex.join(['python', 'benchmarks/paper_tables.py', *argv])}`",
        f"- Commit: {commit()}",
        f"- Machine: {machine()}",
        f"- Data: `{data}`, {len(split)} images, split {SPLIT_RATIOS} with seed {SEED}: {counts['train']} train, "
        f"{counts['val']} validation, {counts['test']} test"
        + (f" ({settings['limit_per_class']} images a class)" if settings["limit_per_class"] else ""),
        f"- Image size {settings['image_size']} px, epochs {settings['epochs']}, batch {settings['batch_size']}, "
        f"Adam lr {DEFAULTS['lr']} with cosine decay, augmentation {AugmentConfig().to_dict()} for every model",
        f"- Best model on the test subset (confusion_matrix.png): {best}", "",
        "| run | model | weights | epochs | best epoch (val) | training time (s) | wall time (s) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        config = result["run"].config
        history = result["history"]
        best_epoch = max(history, key=lambda r: float(r["val_accuracy"]))["epoch"]
        trained = sum(float(r["seconds"]) for r in history)
        lines.append(f"| {name} | {config['model']} | {config['weights']} | {len(history)} | {best_epoch} | "
                     f"{trained:.0f} | {timings.get(name, float('nan')):.0f} |")
    lines += ["", "Training time sums the epochs of history.csv; wall time adds data checks, tracing and the test "
              "evaluation, over every session of a resumed run.", "",
              "Files: table4.md, table5.md, curves.png (fig. 4), confusion_matrix.png (fig. 5), gradcam.png (fig. 6)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args, settings = parse_args(argv)
    os.makedirs(args.runs, exist_ok=True)
    try:
        split_path = prepare_split(args, settings)
        timings = train_all(args, settings, split_path)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paper = None
    if os.path.isfile(args.paper):
        with open(args.paper, encoding="utf-8") as handle:
            text = handle.read()
        paper = {4: paper_table(text, 4), 5: paper_table(text, 5)}
    results = collect(args, settings)
    best = max(results, key=lambda n: (results[n]["report"]["accuracy"], results[n]["report"]["recall_macro"]))
    test_images = results[best]["report"]["num_samples"]
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "table4.md"), table4(results, paper and paper[4], settings, test_images))
    atomic_write_text(os.path.join(args.out, "table5.md"), table5(results, paper and paper[5], args.weights))
    plot_validation_curves(results, os.path.join(args.out, "curves.png"), settings["image_size"])
    shutil.copyfile(os.path.join(results[best]["run"].eval_dir(), rundir.CONFUSION_MATRIX),
                    os.path.join(args.out, rundir.CONFUSION_MATRIX))
    plot_gradcam_grid(results, os.path.join(args.out, "gradcam.png"))
    atomic_write_text(os.path.join(args.out, "README.md"), readme(argv, args, settings, results, timings, best))
    print(f"wrote {args.out}: table4.md, table5.md, curves.png, confusion_matrix.png, gradcam.png, README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
