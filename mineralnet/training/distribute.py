"""tf.distribute strategy for a run: one device, MirroredStrategy on one machine, or multi-worker via TF_CONFIG."""

import json
import os

import tensorflow as tf


def split_cpu(count):
    """Expose the CPU as `count` logical devices (must run before TensorFlow touches a device)."""
    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def make_strategy(name):
    """auto: several GPUs -> mirrored, TF_CONFIG with several workers -> multiworker, else the default strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        workers = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker", [])
        name = "multiworker" if len(workers) > 1 else "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy '{name}': use auto, default, mirrored or multiworker.")
