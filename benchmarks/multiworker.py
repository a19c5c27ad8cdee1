"""Multi-worker training speed (issue 28): images/s of 1 and 2 workers, and the share of a step the gradient
all-reduce takes, on this one machine.

Each worker is a real process of a Keras-distribution job on the JAX backend (mineralnet.training.workers, gloo
over 127.0.0.1), training a registry model on synthetic in-memory batches (the input pipeline is not timed: its
margin is benchmarks/train_throughput.py's). The all-reduce is timed alone: a float32 array of the model's
parameter count summed across the processes, as each step's gradient is. On one machine the workers share its
cores: 2 workers cannot be faster than 1 here; the figure that carries over to two hosts is the communication
share.

    python benchmarks/multiworker.py --model simple_cnn --image-size 64 --batch-size 32 --steps 20
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker(args):
    """One process: join the job, time `steps` training steps after 3 warm-up steps, then the all-reduce alone."""
    os.environ["KERAS_BACKEND"] = "jax"
    from mineralnet.training.workers import job_from_env, start

    job = job_from_env()
    strategy = start(job) if job else None
    import jax
    import keras
    import tensorflow as tf

    from mineralnet.models import build_model

    keras.utils.set_random_seed(0)
    with strategy.scope() if strategy else keras.name_scope("one"):
        model = build_model(args.model, 4, (args.image_size, args.image_size, 3), None)
        model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    share = args.batch_size * jax.local_device_count() // jax.device_count()
    rng = np.random.default_rng(jax.process_index())
    images = rng.uniform(0, 255, (share, args.image_size, args.image_size, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 4, share), 4).astype("float32")
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    marks = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append(time.perf_counter())

    warm = 3
    model.fit(data, epochs=1, steps_per_epoch=warm + args.steps, verbose=0, callbacks=[Clock()])
    step = (marks[-1] - marks[warm - 1]) / args.steps
    params = model.count_params()
    reduce_seconds = None
    if strategy:
        from jax.sharding import NamedSharding, PartitionSpec

        mesh = jax.make_mesh((jax.device_count(),), ("batch",))
        local = np.ones((jax.local_device_count(), params), "float32")
        grads = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("batch")), local)
        total = jax.jit(lambda g: g.sum(axis=0), out_shardings=NamedSharding(mesh, PartitionSpec()))
        total(grads).block_until_ready()
        started = time.perf_counter()
        for _ in range(args.steps):
            total(grads).block_until_ready()
        reduce_seconds = (time.perf_counter() - started) / args.steps
        strategy.finish()
    print(json.dumps({"process": jax.process_index(), "step_s": step, "images_per_s": args.batch_size / step,
                      "params": params, "allreduce_s": reduce_seconds}), flush=True)


def launch(args, count):
    """`count` worker processes of one job on 127.0.0.1; their result lines."""
    ports = [free_port() for _ in range(count)]
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    if count > 1:
        env["KERAS_DISTRIBUTION_JOB_ADDRESSES"] = ",".join(f"127.0.0.1:{p}" for p in ports)
    processes = []
    for index in range(count):
        env_i = {**env, "KERAS_DISTRIBUTION_PROCESS_ID": str(index)} if count > 1 else env
        processes.append(subprocess.Popen([sys.executable, __file__, "--worker", *sys.argv[1:]], env=env_i,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO))
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=900)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if process.returncode or not lines:
            sys.exit(f"a worker failed (exit {process.returncode}): {out[-2000:]}")
        results.append(json.loads(lines[-1]))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="simple_cnn")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (split over the workers)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    one, two = launch(args, 1)[0], launch(args, 2)
    slowest = max(r["step_s"] for r in two)
    reduce_s = max(r["allreduce_s"] for r in two)
    print(f"{args.model} at {args.image_size} px, global batch {args.batch_size}, {one['params']} parameters "
          f"({one['params'] * 4 / 1e6:.1f} MB of float32 gradient per step); load average {os.getloadavg()[0]:.1f}")
    print("| workers | s/step | images/s | all-reduce s/step | communication share |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| 1 | {one['step_s']:.4f} | {args.batch_size / one['step_s']:.1f} | - | 0 % |")
    print(f"| 2 | {slowest:.4f} | {args.batch_size / slowest:.1f} | {reduce_s:.4f} | {100 * reduce_s / slowest:.0f} % |")
    print(f"2 workers / 1 worker images/s: {one['step_s'] / slowest:.2f} (both share this machine's "
          f"{os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
