"""Training with ``model.fit`` under a ``tf.distribute`` strategy.

One ``fit`` call per epoch (so a resumed run can start mid-epoch), with the
callbacks of ``dlrm_tf.callbacks``: the reference's printed lines, evaluation
every ``test_freq`` steps, TensorBoard, the best model by test AUC and
crash-safe backups.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from dlrm_tf import callbacks as cb
from dlrm_tf import checkpoints, memory
from dlrm_tf.config import ModelConfig
from dlrm_tf.data import DataSource
from dlrm_tf.evaluation import Evaluator
from dlrm_tf.losses import DLRMLoss, RoundedAccuracy
from dlrm_tf.model import DLRM, build_model
from dlrm_tf.schedules import WarmupPolyDecay
from dlrm_tf.strategy import is_chief, task_name


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train (everything but the architecture and the data)."""

    mini_batch_size: int = 1
    nepochs: int = 1
    learning_rate: float = 0.01
    optimizer: str = "sgd"
    loss_function: str = "mse"
    loss_weights: tuple[float, float] = (1.0, 1.0)
    round_targets: bool = False
    lr_num_warmup_steps: int = 0
    lr_decay_start_step: int = 0
    lr_num_decay_steps: int = 0
    seed: int = 123
    print_freq: int = 1
    print_time: bool = False
    test_freq: int = -1
    test_mini_batch_size: int = -1
    debug_mode: bool = False
    print_precision: int = 5
    enable_profiling: bool = False
    inference_only: bool = False
    save_model: str = ""
    load_model: str = ""
    run_dir: str = "runs/latest"
    tensorboard_dir: str = ""
    backup_dir: str = ""
    backup_every: int = 1000
    export_dir: str = ""  # written after the run (main.py); its disk space is checked first
    mixed_precision: str = "none"
    jit_compile: bool = False
    steps_per_execution: int = 1
    plot: bool = True
    progress_bar: bool = False
    config_file: str = ""  # the flag file(s) the run came from, for the plot's title

    @property
    def test_batch_size(self) -> int:
        return self.test_mini_batch_size if self.test_mini_batch_size > 0 else self.mini_batch_size


@dataclasses.dataclass
class RunResult:
    """What a run produced."""

    model: DLRM
    history: list[dict]
    test_metrics: dict | None
    steps: int
    artifacts: dict[str, str]
    chief: bool = True


def _local_devices(strategy: tf.distribute.Strategy) -> tuple[str, ...]:
    """The devices this process's replicas run on (the default strategy has no list)."""
    if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        return ("/cpu:0",)
    try:
        return tuple(strategy.extended.worker_devices)
    except RuntimeError:
        return ("/cpu:0",)


class OutOfDataError(ValueError):
    """An epoch's input ended before its planned steps (a bug or a changed dataset)."""


def _check_epoch_ran(model: DLRM, before: int, planned: int, epoch: int, source) -> None:
    """Raises ``OutOfDataError`` unless ``fit`` trained all ``planned`` steps.

    Keras only warns when the input runs out and ends the epoch early; here that
    means rows went untrained, so it is an error.
    """
    ran = int(model.optimizer.iterations.numpy()) - before
    if ran < planned:
        raise OutOfDataError(
            f"epoch {epoch}: the input ended after {ran} of {planned} steps "
            f"({source.config.processed_data_dir or source.config.generation} data); "
            "check that the data was not changed since its metadata.json was written"
        )


def make_loss(config: TrainConfig) -> DLRMLoss:
    return DLRMLoss(config.loss_function, config.loss_weights, config.round_targets)


def compile_model(model: DLRM, config: TrainConfig) -> None:
    """Compiles with the sparse-update optimizer, the reference's schedule and loss."""
    from dlrm_tf.optimizers import make_optimizer

    schedule = WarmupPolyDecay(
        config.learning_rate,
        config.lr_num_warmup_steps,
        config.lr_decay_start_step,
        config.lr_num_decay_steps,
    )
    model.compile(
        optimizer=make_optimizer(config.optimizer, schedule),
        loss=make_loss(config),
        metrics=[RoundedAccuracy(config.round_targets)],
        steps_per_execution=config.steps_per_execution,
    )


def describe_data(source: DataSource, examples: int) -> str:
    """The data in a few words: where it came from and its rows per epoch."""
    if source.from_files:
        return f"{source.config.processed_data_dir} ({examples:,} train rows)"
    return f"{source.config.generation} data ({examples:,} rows/epoch)"


def placement(strategy: tf.distribute.Strategy) -> str:
    """Where the replicas run, e.g. ``one device (/cpu:0)``, ``MirroredStrategy, 2
    replicas (CPU:0, CPU:1)``."""
    devices = [d.split("/device:")[-1] for d in _local_devices(strategy)]
    if strategy.num_replicas_in_sync == 1 and len(devices) == 1:
        return f"one device ({devices[0]})"
    name = type(strategy).__name__
    return f"{name}, {strategy.num_replicas_in_sync} replicas ({', '.join(devices)})"


def run_hparams(
    model_config: ModelConfig, config: TrainConfig, strategy: tf.distribute.Strategy, data: str
) -> dict:
    """The run's hyperparameters as TensorBoard's HParams dashboard shows them."""
    cfg = model_config
    return {
        "config_file": config.config_file or "(flags only)",
        "data": data,
        "embedding_dim": cfg.embedding_dim,
        "tables": len(cfg.table_sizes),
        "table_rows": int(sum(cfg.table_sizes)),
        "bottom_mlp": "-".join(map(str, cfg.bottom_mlp)),
        "top_mlp": "-".join(map(str, cfg.top_mlp)),
        "interaction": cfg.interaction + ("+itself" if cfg.interaction_itself else ""),
        "optimizer": config.optimizer,
        "learning_rate": float(config.learning_rate),
        "lr_warmup_decay": (
            f"{config.lr_num_warmup_steps}/{config.lr_decay_start_step}/{config.lr_num_decay_steps}"
        ),
        "loss_function": config.loss_function,
        "mini_batch_size": config.mini_batch_size,
        "nepochs": config.nepochs,
        "precision": "float32" if config.mixed_precision == "none" else config.mixed_precision,
        "placement": placement(strategy),
        "seed": config.seed,
    }


def run_title(hparams: dict) -> str:
    """Two lines naming the run (the plot's title): config and data; how it trained."""
    return (
        f"{hparams['config_file']} | data: {hparams['data']}\n"
        f"{hparams['optimizer']} lr {hparams['learning_rate']:g}, batch "
        f"{hparams['mini_batch_size']}, {hparams['loss_function']} | {hparams['precision']} | "
        f"{hparams['placement']}"
    )


def set_precision(policy: str) -> None:
    """Sets Keras's global dtype policy (``none``, ``bfloat16`` or ``float16``)."""
    names = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
    keras.mixed_precision.set_global_policy(names[policy])


def run(
    model_config: ModelConfig,
    train_config: TrainConfig,
    source: DataSource,
    strategy: tf.distribute.Strategy,
    log=print,
) -> RunResult:
    """Trains (or, with ``inference_only``, only evaluates) and returns the result."""
    cfg = train_config
    chief = is_chief(strategy)
    keras.utils.set_random_seed(cfg.seed)
    set_precision(cfg.mixed_precision)
    replicas = strategy.num_replicas_in_sync
    devices = _local_devices(strategy)
    on_cpu = all("GPU" not in d.upper() for d in devices)
    writes = chief and not cfg.inference_only  # the chief writes the model and the export
    memory.plan_and_check(
        model_config, cfg.optimizer, len(devices) if on_cpu else 1, log,
        save_model=cfg.save_model if writes else "",
        backup_dir="" if cfg.inference_only else cfg.backup_dir,
        export_dir=cfg.export_dir if writes else "",
        backup_copies=checkpoints.BACKUPS_KEPT + 1,
        export_assets=memory.vocabulary_bytes(source.metadata),
    )  # fmt: skip
    if cfg.mini_batch_size % replicas:
        raise ValueError(
            f"--mini_batch_size={cfg.mini_batch_size} (the global batch) must be divisible by "
            f"the {replicas} replicas"
        )

    with strategy.scope():
        model = build_model(model_config, jit_compile=cfg.jit_compile)
        compile_model(model, cfg)
        model.optimizer.build(model.trainable_variables)
    if cfg.load_model:
        checkpoints.restore_model_state(
            model, cfg.load_model, with_optimizer=not cfg.inference_only
        )
        step = int(model.optimizer.iterations.numpy())
        log(f"Loaded model state from {cfg.load_model} at step {step}")

    steps = source.steps_per_epoch(cfg.mini_batch_size)
    test_steps = source.test_steps(cfg.test_batch_size, steps)
    # Like the reference, generated data is tested only when --test_freq asks for it.
    has_test = source.has_split("test") and (source.from_files or cfg.test_freq > 0)
    evaluator = Evaluator(model, strategy, make_loss(cfg))

    def test_data():
        return source.test_dataset(strategy, cfg.test_batch_size, test_steps)

    artifacts: dict[str, str] = {}
    if cfg.inference_only:
        if not has_test:
            raise ValueError("--inference_only: the data has no test split to evaluate")
        metrics = evaluator.evaluate(test_data())
        step = int(model.optimizer.iterations.numpy())
        epoch = max(step - 1, 0) // steps
        log(cb.format_test_line(step - epoch * steps, steps, epoch, metrics, metrics))
        return RunResult(
            model, [], metrics, int(model.optimizer.iterations.numpy()), artifacts, chief
        )

    if cfg.debug_mode:
        with np.printoptions(precision=cfg.print_precision):
            cb.print_debug(model, model_config, source, cfg.mini_batch_size, log)

    backup = (
        checkpoints.Backup(cfg.backup_dir, model, task=task_name(strategy))
        if cfg.backup_dir
        else None
    )
    if backup is not None and backup.restore():
        log(
            f"Resumed from backup {backup.latest} at step {int(model.optimizer.iterations.numpy())}"
        )

    tb_dir = cfg.tensorboard_dir or os.path.join(cfg.run_dir, "tensorboard")
    epoch_examples = source.examples_per_epoch(cfg.mini_batch_size, steps)
    hparams = run_hparams(model_config, cfg, strategy, describe_data(source, epoch_examples))
    logger = cb.ReferenceLogger(
        steps_per_epoch=steps,
        global_batch=cfg.mini_batch_size,
        print_freq=cfg.print_freq,
        print_time=cfg.print_time,
        test_freq=cfg.test_freq,
        evaluate=(lambda: evaluator.evaluate(test_data())) if has_test else None,
        learning_rate=model.optimizer.learning_rate,
        tensorboard_dir=tb_dir if chief else None,
        best_model_path=cfg.save_model if chief else "",
        save_model=lambda path, metrics: checkpoints.save_model(model, path, metrics),
        log=log,
        progress_bar=cfg.progress_bar,
        hparams=hparams,
    )
    # The best test metrics travel with the model: a resumed run must beat them.
    if backup is not None and backup.best_metrics is not None:
        logger.best = backup.best_metrics
    elif cfg.load_model:
        logger.best = checkpoints.saved_best_metrics(cfg.load_model)
    # The logger writes every TensorBoard scalar; Keras's TensorBoard callback would add
    # curves of other meanings (running means since the epoch's start) and suppress
    # summaries at steps that are not multiples of its update_freq.
    callbacks: list[keras.callbacks.Callback] = [logger]
    if backup is not None:
        callbacks.append(cb.BackupCallback(backup, cfg.backup_every, lambda: logger.best))
    profile = (
        cb.ProfileCallback(tb_dir, start=min(5, steps), num_steps=3, log=logger.emit)
        if (cfg.enable_profiling and chief)
        else None
    )
    if profile is not None:
        callbacks.append(profile)

    start_step = int(model.optimizer.iterations.numpy())
    started = time.time()
    history_extra = {"start_step": start_step, "steps_per_epoch": steps,
                     "run": run_title(hparams)}
    try:
        _train_epochs(model, source, strategy, cfg, steps, start_step, logger, callbacks)
    except cb.TrainingDivergedError:
        if chief:  # what was learnt up to the divergence stays readable
            _write_history(cfg.run_dir, logger, None, model, time.time() - started,
                           history_extra)
        raise
    total_steps = int(model.optimizer.iterations.numpy())
    elapsed = time.time() - started
    loop_test_seconds = logger.test_seconds

    test_metrics = None
    if has_test and (logger.last_test_step != total_steps):
        test_metrics = logger.run_test(total_steps, final=True)
    elif has_test:
        test_metrics = logger.history[-1].get("test")
    if backup is not None:
        backup.save(force=True, best=logger.best)

    if chief:
        history_path = _write_history(
            cfg.run_dir, logger, test_metrics, model, elapsed,
            dict(history_extra, test_seconds=loop_test_seconds),
        )
        artifacts["history"] = history_path
        artifacts["tensorboard"] = tb_dir
        if cfg.save_model:
            if not has_test:  # nothing to rank models by: the trained model is the result
                checkpoints.save_model(model, cfg.save_model, metrics=test_metrics)
            elif not logger.saved_best:
                log(
                    f"{cfg.save_model} not replaced: no evaluation beat the best test AUC "
                    f"{logger.best['auc']:.4f} carried from {cfg.load_model or 'earlier'}"
                )
            artifacts["model"] = cfg.save_model
        if cfg.plot and logger.history:
            from dlrm_tf.plot import plot_history

            png = plot_history(
                logger.history,
                os.path.join(cfg.run_dir, "training.png"),
                title=run_title(hparams),
                loss_name=cfg.loss_function,
                print_freq=cfg.print_freq,
            )
            if png:
                artifacts["plot"] = png
    return RunResult(model, logger.history, test_metrics, total_steps, artifacts, chief)


def _train_epochs(model, source, strategy, cfg, steps, start_step, logger, callbacks) -> None:
    """One ``fit`` per epoch from ``start_step`` on (a resumed epoch skips its trained steps)."""
    for epoch in range(start_step // steps, cfg.nepochs):
        skip = max(0, start_step - epoch * steps)
        data = source.train_dataset(strategy, cfg.mini_batch_size, steps, epoch=epoch, skip=skip)
        logger.start_epoch(
            epoch, first_step=skip, examples=source.examples_per_epoch(cfg.mini_batch_size, steps)
        )
        before = int(model.optimizer.iterations.numpy())
        model.fit(
            data,
            initial_epoch=epoch,
            epochs=epoch + 1,
            steps_per_epoch=steps - skip,
            callbacks=callbacks,
            shuffle=False,
            verbose=0,  # the logger draws --progress_bar
        )
        _check_epoch_ran(model, before, steps - skip, epoch, source)


def _write_history(
    run_dir: str, logger, test: dict | None, model, seconds: float, extra: dict
) -> str:
    """Writes ``run_dir/history.json`` (printed records, final test metrics, steps, run facts)."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "history.json")
    record = {
        "history": logger.history,
        "test": test,
        "steps": int(model.optimizer.iterations.numpy()),
        "seconds": seconds,
        "examples": logger.examples_seen,
        **extra,
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    return path
