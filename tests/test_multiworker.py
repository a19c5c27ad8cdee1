"""Multi-worker training (issue 28): two real train.py processes on 127.0.0.1 (Keras' distribution API on JAX, gloo
collectives), against one process with the same global batch and seed; a worker killed mid-run and the job
restarted with --resume; and a wrong job answered in one line, in bounded time."""

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import REPO

EPOCHS, BATCH = 3, 12  # the demo split has 36 training images: 3 full global batches of 12 (6 per worker)
TRAIN = ["--weights", "none", "--model", "simple_cnn", "--image-size", "32", "--epochs", str(EPOCHS),
         "--batch-size", str(BATCH), "--no-evaluate"]
DIGEST = re.compile(r"worker (\d) of 2: weights sha256 ([0-9a-f]{64})")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def job_env(ports, index, scratch, timeout=30):
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TF_CONFIG")}
    env.update({"KERAS_DISTRIBUTION_JOB_ADDRESSES": ",".join(f"127.0.0.1:{p}" for p in ports),
                "KERAS_DISTRIBUTION_PROCESS_ID": str(index), "MINERALNET_WORKER_TIMEOUT": str(timeout),
                "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"})
    return env


def start_workers(tmp_path, name, args):
    """Two workers of one job; their output goes to files (read while they run)."""
    ports = free_ports(2)
    workers = []
    for index in range(2):
        scratch = tmp_path / f"{name}-scratch{index}"
        scratch.mkdir()
        log = open(tmp_path / f"{name}-{index}.log", "w")
        workers.append((subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT, env=job_env(ports, index, scratch)),
                        tmp_path / f"{name}-{index}.log", scratch))
    return workers


def wait_all(workers, limit=240):
    for process, log, _ in workers:
        process.wait(limit)
    return [(process.returncode, log.read_text()) for process, log, _ in workers]


def history(run):
    with open(os.path.join(run, "history.csv")) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_two_workers_train_as_one_process_and_a_killed_job_resumes(tmp_path, demo_data):
    run = str(tmp_path / "run")
    # One process, same global batch and seed (the JAX backend, as the workers: the backends' initialisers differ),
    # run beside the first job.
    reference = subprocess.Popen([sys.executable, "train.py", "--data", demo_data, "--out", str(tmp_path / "one"),
                                  "--strategy", "default", *TRAIN], cwd=REPO, stdout=open(tmp_path / "one.log", "w"),
                                 stderr=subprocess.STDOUT, env={**os.environ, "KERAS_BACKEND": "jax"})

    # Two workers; kill worker 1 (SIGKILL) as soon as the chief has checkpointed epoch 1.
    workers = start_workers(tmp_path, "first", ["--data", demo_data, "--out", run, *TRAIN])
    chief_log = workers[0][1]
    deadline = time.monotonic() + 240
    while f"epoch 1/{EPOCHS} [full]" not in chief_log.read_text():
        assert workers[0][0].poll() is None and time.monotonic() < deadline, chief_log.read_text()[-3000:]
        time.sleep(0.01)
    workers[1][0].send_signal(signal.SIGKILL)
    started = time.monotonic()
    workers[0][0].wait(60)  # the chief does not hang on its dead peer
    assert workers[0][0].returncode != 0 and time.monotonic() - started < 60
    kept = history(run)
    assert 1 <= len(kept) < EPOCHS  # killed mid-run: the last checkpoint is an earlier epoch's
    # The killed worker wrote its copies into its own scratch folder, not into the run directory.
    assert [p.name for p in workers[1][2].iterdir() if p.name.startswith("mineralnet-worker-")]
    assert not any(p.name.startswith("mineralnet-worker-") for p in (tmp_path / "first-scratch0").iterdir())

    # The job restarted (new ports, as a scheduler would): both workers resume from the last checkpoint.
    resumed = start_workers(tmp_path, "again", ["--data", demo_data, "--out", run, "--resume", *TRAIN])
    outputs = wait_all(resumed)
    assert reference.wait(240) == 0, (tmp_path / "one.log").read_text()[-2000:]
    for code, text in outputs:
        assert code == 0, text[-3000:]
    digests = dict(match for code, text in outputs for match in DIGEST.findall(text))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]  # the replicas' weights are identical
    rows, one = history(run), history(tmp_path / "one")
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert rows[:len(kept)] == kept  # the epochs before the kill are kept as they were
    # Per epoch, the loss of two workers is the one process's: each step's global batch is the same 12 images,
    # the gradient the mean of the two halves' (all-reduced in float32, another summation order: ~1e-7 relative
    # per step); 1e-5 relative bounds 9 such steps with room, and is 1000 times below the loss's change per epoch.
    for two, single in zip(rows, one):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(two[key]) == pytest.approx(float(single[key]), rel=1e-5), (key, two, single)
    # Only the chief writes the run directory; the other worker's scratch folder is gone.
    assert not list((tmp_path / "again-scratch1").iterdir())
    assert sorted(os.listdir(run)) == sorted(os.listdir(tmp_path / "one"))
    assert sorted(os.listdir(os.path.join(run, "checkpoint"))) == [f"epoch-{EPOCHS}.keras", "state.json"]
    # What comes after training reads the chief's run directory as any other (here on the TensorFlow backend).
    from mineralnet.evaluate import evaluate_run
    from mineralnet.gradcam import gradcam_run

    report = evaluate_run(run, subset="test", baseline=False)
    assert 0 <= report["accuracy"] <= 1 and os.path.exists(os.path.join(run, "eval"))
    test_file = os.path.join(demo_data, *next(r for r in csv.DictReader(open(os.path.join(run, "split.csv")))
                                             if r["subset"] == "test")["path"].split("/"))
    assert [os.path.exists(p) for p in gradcam_run(run, [test_file], str(tmp_path / "cam"))] == [True]


def answer(out, env_changes):
    """train.py --demo with a job in the environment: answered before TensorFlow loads (the job is checked first)."""
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TF_CONFIG")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "train.py", "--demo", "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=60)


@pytest.mark.slow
def test_a_wrong_job_answers_in_one_line_within_its_time_limit(tmp_path):
    free, other = free_ports(2)
    job, index_of = "KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_PROCESS_ID"
    out = tmp_path / "run"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free))
        holder.listen()
        done = answer(out, {job: f"127.0.0.1:{free},127.0.0.1:{other}", index_of: "0"})
    assert done.returncode == 2 and f"port {free} on 127.0.0.1" in done.stderr and "in use" in done.stderr
    # 192.0.2.1 (TEST-NET-1) is no address of this host.
    done = answer(out, {job: f"192.0.2.1:{free},127.0.0.1:{other}", index_of: "0"})
    assert done.returncode == 2 and "names 192.0.2.1 for worker 0" in done.stderr and "no such address" in done.stderr
    done = answer(out, {job: f"127.0.0.1:{free}", index_of: "1"})
    assert done.returncode == 2 and "KERAS_DISTRIBUTION_PROCESS_ID='1'" in done.stderr
    done = answer(out, {"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}}'})
    assert done.returncode == 2 and "TF_CONFIG" in done.stderr and job in done.stderr
    # A worker whose coordinator never comes, and a coordinator whose other worker never comes (two jobs, side by
    # side): each gives up after MINERALNET_WORKER_TIMEOUT seconds (3 here) with one line, exit status 2.
    cases = []
    for index, expected in ((1, "could not reach the coordinator"), (0, "not all 2 workers")):
        first, second = free_ports(2)
        env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TF_CONFIG")}
        env.update({job: f"127.0.0.1:{first},127.0.0.1:{second}", index_of: str(index),
                    "MINERALNET_WORKER_TIMEOUT": "3"})
        cases.append((subprocess.Popen([sys.executable, "train.py", "--demo", "--weights", "none", "--out", str(out)],
                                       cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                      expected))
    started = time.monotonic()
    for process, expected in cases:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 2 and expected in stderr, stderr[-2000:]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0]
    assert time.monotonic() - started < 45  # TensorFlow's import and the 3 s
    assert not (tmp_path / "run").exists()
