"""The processes of a multi-worker run: Keras 3's distribution API (DataParallel) on the JAX backend.

Why not TensorFlow's MultiWorkerMirroredStrategy: Keras 3 cannot fit under it (its fit() fails on the strategy's
PerReplica batches, keras-team/keras#20585; docs/distributed.md has the evidence). The models run unchanged under
JAX, whose multi-process runtime (`jax.distributed`, gloo collectives on CPUs, NCCL on GPUs) is what Keras'
`keras.distribution` uses: every process holds a full replica, each step's global batch is split over the processes
and the gradients are averaged, so all replicas stay identical.

A job is named the way Keras names it, in the environment (one spelling for a shell, a cluster scheduler and a
Kubernetes manifest): KERAS_DISTRIBUTION_JOB_ADDRESSES (host:port of every process, the first one the coordinator)
and KERAS_DISTRIBUTION_PROCESS_ID (this process's index). Everything here answers within MINERALNET_WORKER_TIMEOUT
seconds: a wrong address, a port in use or a worker that never comes give one line and exit status 2, never a hang.
Imports neither JAX nor Keras at module level: train.py picks the backend with it before Keras loads.
"""

import contextlib
import dataclasses
import errno
import json
import os
import socket
import sys
import threading
import time

from mineralnet.training.config import ConfigError

ADDRESSES, PROCESS_ID, NUM_PROCESSES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_PROCESS_ID",
                                        "KERAS_DISTRIBUTION_NUM_PROCESSES")
TIMEOUT = "MINERALNET_WORKER_TIMEOUT"
DEFAULT_TIMEOUT = 120  # seconds for every worker to connect, and for a silent worker to be declared dead
EXAMPLE = f"{ADDRESSES}=10.0.0.1:12345,10.0.0.2:12345 {PROCESS_ID}=0"


@dataclasses.dataclass(frozen=True)
class Job:
    """One process's view of the job: every process's (host, port), its own index, the time limit in seconds."""

    addresses: tuple
    process_id: int
    timeout: float

    count = property(lambda self: len(self.addresses))
    chief = property(lambda self: self.process_id == 0)  # writes the run directory
    coordinator = property(lambda self: "%s:%d" % self.addresses[0])


def job_from_env(environ=None):
    """The Job the environment names, or None when KERAS_DISTRIBUTION_JOB_ADDRESSES is unset; ConfigError naming
    the variable and the fix for a value that makes no sense."""
    environ = os.environ if environ is None else environ
    text = environ.get(ADDRESSES, "").strip()
    if not text:
        return None
    addresses = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{ADDRESSES} entry '{item.strip()}' is not host:port: list every worker, e.g. "
                              f"{EXAMPLE}.")
        addresses.append((host.strip("[]"), int(port)))
    count = environ.get(NUM_PROCESSES)
    if count is not None and count != str(len(addresses)):
        raise ConfigError(f"{NUM_PROCESSES}={count} but {ADDRESSES} lists {len(addresses)} workers: unset "
                          f"{NUM_PROCESSES} or make them agree.")
    index = environ.get(PROCESS_ID, "")
    if not index.isdigit() or int(index) >= len(addresses):
        raise ConfigError(f"{PROCESS_ID}={index!r} must be this worker's index in {ADDRESSES}, 0 to "
                          f"{len(addresses) - 1} (0 is the coordinator and writes the run directory).")
    try:
        timeout = float(environ.get(TIMEOUT, DEFAULT_TIMEOUT))
    except ValueError:
        timeout = -1
    if not timeout > 0:
        raise ConfigError(f"{TIMEOUT}={environ.get(TIMEOUT)!r} must be a positive number of seconds.")
    return Job(tuple(addresses), int(index), timeout)


def wanted(strategy, environ=None):
    """Whether `strategy` (train.py's --strategy) with this environment means a multi-worker run."""
    job = job_from_env(environ)
    return strategy == "multiworker" or (strategy == "auto" and job is not None and job.count > 1)


def use_jax_backend(strategy, environ=None):
    """Select Keras' JAX backend for a multi-worker run and check this host's address and the coordinator's port;
    must run before Keras is imported (train.py calls it: a wrong job answers before TensorFlow loads)."""
    environ = os.environ if environ is None else environ
    tf_workers = json.loads(environ.get("TF_CONFIG") or "{}").get("cluster", {}).get("worker", [])
    if strategy in ("auto", "multiworker") and len(tf_workers) > 1 and job_from_env(environ) is None:
        raise ConfigError(f"TF_CONFIG names {len(tf_workers)} workers, but Keras 3 cannot train under TensorFlow's "
                          f"MultiWorkerMirroredStrategy: name the job as {EXAMPLE} instead (docs/distributed.md).")
    if not wanted(strategy, environ):
        return
    job = job_from_env(environ)
    if job is None:
        raise ConfigError(f"--strategy multiworker needs the job in the environment, e.g. {EXAMPLE} "
                          "(docs/distributed.md).")
    _check_local(job)
    backend = environ.get("KERAS_BACKEND", "jax")
    if backend != "jax":
        raise ConfigError(f"--strategy multiworker trains on Keras' JAX backend, but KERAS_BACKEND={backend}: "
                          "unset KERAS_BACKEND (docs/distributed.md says why not TensorFlow).")
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != "jax":
        raise ConfigError("--strategy multiworker needs Keras' JAX backend, but Keras is already loaded with "
                          "another one: start a new process with KERAS_BACKEND=jax.")
    environ["KERAS_BACKEND"] = "jax"


def _check_local(job):
    """This process's own address must be one of this host's, and the coordinator's port free (bounded: no
    network wait)."""
    host, port = job.addresses[job.process_id]
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port if job.chief else 0))
        except socket.gaierror:
            raise ConfigError(f"{ADDRESSES} names host '{host}' for worker {job.process_id}, which does not "
                              "resolve: use an IP address or a resolvable name.") from None
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} (worker 0, the coordinator, in {ADDRESSES}) is in use: "
                                  "pick a free port, or stop the process that holds it.") from None
            raise ConfigError(f"{ADDRESSES} names {host} for worker {job.process_id} ({PROCESS_ID}="
                              f"{job.process_id}), but this host has no such address ({error.strerror}): run "
                              "this worker on that host, or fix its address or its process id.") from None


def _wait_for_coordinator(job):
    """A worker other than 0 waits (up to the timeout) until the coordinator's port accepts connections."""
    host, port = job.addresses[0]
    deadline = time.monotonic() + job.timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=min(5.0, job.timeout)).close()
            return
        except OSError as error:
            if time.monotonic() > deadline:
                raise ConfigError(f"worker {job.process_id} could not reach the coordinator {job.coordinator} (worker "
                                  f"0 of {ADDRESSES}) within {job.timeout:g} s ({error}): start worker 0 there, "
                                  f"check the address and the firewall, or raise {TIMEOUT}.") from None
            time.sleep(0.2)


@contextlib.contextmanager
def _deadline(seconds, message):
    """Inside the block: after `seconds`, print `message` as the error line and exit 2. JAX's own time-outs end
    the process with a C++ abort and a page of log; this says what to fix first, in one line."""

    def expire():
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class MultiWorker:
    """The strategy of a multi-worker run as train() uses one: `scope()`, `num_replicas_in_sync`, and `chief`."""

    def __init__(self, job, distribution, replicas):
        self.job, self.distribution, self.num_replicas_in_sync = job, distribution, replicas
        self.chief = job.chief

    def scope(self):
        return self.distribution.scope()

    def local_batches(self, dataset, batch):
        """This process's part of every global batch (`batch` images) of `dataset` (the same on every worker: same
        files, same seed), in process order; Keras assembles the global batch from the parts. Slicing here rather than
        Keras' auto-sharding (which rebatches by the dataset's static batch size) keeps the global batch exactly
        what one process would train on, augmentation and Mixup included."""
        import jax

        share = batch * jax.local_device_count() // jax.device_count()
        begin = jax.process_index() * share
        return dataset.map(lambda *parts: tuple(part[begin:begin + share] for part in parts))

    def finish(self):
        """Every worker waits here for the others (bounded), then leaves the job; the chief goes on alone
        (evaluation) without the distribution."""
        import jax
        import keras

        with _deadline(self.job.timeout, f"worker {self.job.process_id}: the other workers did not finish within "
                                         f"{self.job.timeout:g} s of this one (one died? see its log)"):
            jax.distributed.shutdown()
        keras.distribution.set_distribution(None)


def start(job):
    """Join the job: checks, jax.distributed.initialize, and Keras' DataParallel over every process's devices
    (set as the process's distribution: fit() reads it). Returns the MultiWorker."""
    _check_local(job)
    if not job.chief:
        _wait_for_coordinator(job)
    import jax
    import keras

    limit = int(job.timeout) + 5  # JAX's own limits come after ours, which print the line that names the fix
    with _deadline(job.timeout, f"worker {job.process_id}: not all {job.count} workers of {ADDRESSES} joined "
                                f"the coordinator {job.coordinator} within {job.timeout:g} s: start every worker "
                                f"with its own {PROCESS_ID}, check the addresses, or raise {TIMEOUT}."):
        jax.distributed.initialize(job.coordinator, job.count, job.process_id, initialization_timeout=limit,
                                   heartbeat_timeout_seconds=limit, shutdown_timeout_seconds=limit,
                                   coordinator_bind_address=job.coordinator if job.chief else None)
    distribution = keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)
    return MultiWorker(job, distribution, jax.device_count())
