"""Device selection and the ``tf.distribute`` strategy of a run."""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker_mirrored")


class DeviceError(RuntimeError):
    """The requested devices do not exist on this machine."""


def configure_devices(use_gpu: bool, num_gpus: int, num_cpu_replicas: int) -> list[str]:
    """Chooses the devices of this process; must run before TensorFlow initialises them.

    CPU is the default, like the reference. ``use_gpu`` takes ``num_gpus`` GPUs
    (0 = all) and fails clearly when there are fewer. ``num_cpu_replicas`` splits
    the CPU into that many logical devices, which exercises the mirrored path on
    a machine without GPUs.

    Returns:
      The device names replicas will run on.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if use_gpu:
        if not gpus:
            raise DeviceError(
                "`use_gpu`: no GPU is visible to TensorFlow on this machine "
                "(check the driver and CUDA_VISIBLE_DEVICES), run without `use_gpu` for CPU"
            )
        wanted = num_gpus or len(gpus)
        if wanted > len(gpus):
            raise DeviceError(
                f"`num_gpus`={num_gpus}: only {len(gpus)} GPU(s) are visible on this machine"
            )
        tf.config.set_visible_devices(gpus[:wanted], "GPU")
        for gpu in gpus[:wanted]:
            tf.config.experimental.set_memory_growth(gpu, True)
        return [f"/gpu:{i}" for i in range(wanted)]
    if num_gpus:
        raise DeviceError(f"`num_gpus`={num_gpus} needs `use_gpu`")
    if gpus:
        tf.config.set_visible_devices([], "GPU")
    if num_cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_replicas
        )
        return [f"/cpu:{i}" for i in range(num_cpu_replicas)]
    return ["/cpu:0"]


def make_strategy(name: str, devices: list[str]) -> tf.distribute.Strategy:
    """The strategy named by ``--distribution_strategy`` over ``devices``."""
    if name not in STRATEGIES:
        raise ValueError(f"`distribution_strategy`={name!r}: one of {STRATEGIES}")
    if name == "auto":
        name = "mirrored" if len(devices) > 1 else "one_device"
    if name == "one_device":
        if len(devices) > 1:
            raise DeviceError(
                f"`distribution_strategy`=one_device with {len(devices)} devices; "
                "use mirrored (or auto)"
            )
        if devices[0].startswith("/gpu"):
            return tf.distribute.OneDeviceStrategy(devices[0])
        # The default strategy: no distribution machinery at all on one CPU.
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if "TF_CONFIG" not in os.environ:
        raise DeviceError(
            "`distribution_strategy`=multi_worker_mirrored needs the TF_CONFIG environment "
            'variable, e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    try:
        json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as err:
        raise DeviceError(f"TF_CONFIG is not valid JSON: {err}") from err
    from dlrm_tf.training import multi_worker

    multi_worker.install_keras_workarounds()
    return tf.distribute.MultiWorkerMirroredStrategy()


def task_name(strategy: tf.distribute.Strategy) -> str | None:
    """``"worker-1"`` etc. for a process that is not the chief, else None."""
    if is_chief(strategy):
        return None
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}-{resolver.task_id}"


def task_names(strategy: tf.distribute.Strategy) -> list[str | None]:
    """``task_name`` of every worker of a multi-worker ``strategy``, in replica order."""
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    tasks = [("chief", i) for i in range(len(spec.get("chief", [])))]
    tasks += [("worker", i) for i in range(len(spec.get("worker", [])))]
    return [None if n == 0 else f"{kind}-{index}" for n, (kind, index) in enumerate(tasks)]


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` spans several worker processes."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's artifacts (worker 0, or the only process)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0)
