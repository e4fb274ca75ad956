"""Training with ``model.fit`` under a ``tf.distribute`` strategy.

``run`` is a sequence of steps, each callable on its own: ``prepare_run``
(seed, precision, memory and batch checks), ``build_state`` (the model,
compiled, with ``--load_model`` restored), ``restore_backup``,
``announce_nothing_to_train``, ``make_callbacks`` (composes the callbacks of
``dlrm_tf.training.callbacks``: the reference's printed lines, evaluation every
``test_freq`` steps, TensorBoard, the best model by test AUC and crash-safe
backups), ``fit_epochs`` (one ``fit`` call per epoch, so a resumed run can
start mid-epoch), ``final_test`` and ``write_artifacts``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from dlrm_tf.config import INITIALIZERS, ConfigError, ModelConfig
from dlrm_tf.model import saving as model_files
from dlrm_tf.model.dlrm import DLRM, build_model
from dlrm_tf.model.losses import DLRMLoss, RoundedAccuracy
from dlrm_tf.model.placed_variables import WorkerTable
from dlrm_tf.model.reference_init import initial_stream, initialize_as_reference
from dlrm_tf.model.schedules import WarmupPolyDecay
from dlrm_tf.reports.debug_dump import print_debug, print_parameters
from dlrm_tf.training import backups, memory
from dlrm_tf.training import callbacks as cb
from dlrm_tf.training.data_sources import DataSource
from dlrm_tf.training.evaluation import Evaluator
from dlrm_tf.training.placement import PlacementPlan, plan_and_print
from dlrm_tf.training.strategy import is_chief, task_name, task_names
from dlrm_tf.training.worker_tables import SingleDeviceCopy, spread_over_workers, worker_index
from input_pipeline.random_data import batch_sizes


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
    init: str = "keras"  # one of config.INITIALIZERS
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
    export_dir: str = ""  # written after the run (job.py); its disk space is checked first
    mixed_precision: str = "none"
    embedding_placement: str = "replicated"  # one of config.PLACEMENTS
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
    training_model: DLRM | None = None  # the model as trained, when ``model`` is its copy


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
            f"({source.describe()}{' data' if source.from_files else ''}); "
            "check that the data was not changed since its metadata.json was written"
        )


def make_loss(config: TrainConfig) -> DLRMLoss:
    return DLRMLoss(config.loss_function, config.loss_weights, config.round_targets)


def compile_model(model: DLRM, config: TrainConfig) -> None:
    """Compiles with the sparse-update optimizer, the reference's schedule and loss."""
    from dlrm_tf.model.optimizers import make_optimizer

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


def describe_data(source: DataSource) -> str:
    """The data in a few words: where it came from and its rows per epoch."""
    rows = "train rows" if source.from_files else "rows/epoch"
    return f"{source.describe()} ({source.examples_per_epoch():,} {rows})"


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


@dataclasses.dataclass
class RunState:
    """The built (and restored) model of a run, its data and where its training starts."""

    model: DLRM
    strategy: tf.distribute.Strategy
    source: DataSource  # in the run's batch sizes
    evaluator: Evaluator
    has_test: bool
    chief: bool
    backup: backups.Backup | None = None
    best: dict | None = None  # the best test metrics carried from a backup or --load_model
    # Tables spread over workers: the one-device model that files are written from.
    single: SingleDeviceCopy | None = None

    def model_to_write(self) -> DLRM:
        """The model as one device holds it (gathered from every worker when its tables
        are spread: then a collective step that every worker must take)."""
        return self.single.refresh() if self.single else self.model

    def save_model(self, path: str, metrics: dict | None) -> None:
        """``--save_model``: the chief writes ``model_to_write`` (every worker calls this)."""
        model = self.model_to_write()
        if self.chief:
            model_files.save_model(model, path, metrics)

    @property
    def step(self) -> int:
        """The optimizer's global step."""
        return int(self.model.optimizer.iterations.numpy())

    @property
    def steps(self) -> int:
        """Training steps per epoch."""
        return self.source.steps_per_epoch()

    def test_data(self):
        return self.source.test_dataset(self.strategy)

    def position_of(self, step: int) -> tuple[int, int]:
        """(epoch, 1-based iteration) of global ``step``, e.g. a loaded model's."""
        epoch = max(step - 1, 0) // self.steps
        return epoch, step - epoch * self.steps


@dataclasses.dataclass
class RunCallbacks:
    """The callbacks of a run's ``fit`` calls and the parts the trainer reads after."""

    position: cb.EpochPosition
    history: cb.RunHistory
    printer: cb.ProgressPrinter
    best: cb.BestMetrics
    evaluator: cb.PeriodicEvaluator | None
    saver: cb.BestModelSaver | None
    tensorboard_dir: str
    hparams: dict
    callbacks: list[keras.callbacks.Callback]


def prepare_run(
    model_config: ModelConfig, cfg: TrainConfig, source: DataSource, strategy, log=print
) -> PlacementPlan | None:
    """Seeds, sets the precision, prints the memory plan and checks memory, disk space
    and batch before any model exists; prints and returns the ``embedding_placement``
    plan unless replicated (``plan_tables``)."""
    keras.utils.set_random_seed(cfg.seed)
    set_precision(cfg.mixed_precision)
    replicas = strategy.num_replicas_in_sync
    devices = _local_devices(strategy)
    on_cpu = all("GPU" not in d.upper() for d in devices)
    writes = is_chief(strategy) and not cfg.inference_only  # the chief writes the outputs
    plan, plan_lines = None, []
    if cfg.embedding_placement != "replicated":
        plan = plan_tables(model_config, cfg, strategy, plan_lines.append)
    held = None
    if plan is not None and plan.spread and on_cpu:
        held = host_bytes(plan, strategy, writes and bool(cfg.save_model or cfg.export_dir))
    memory.plan_and_check(
        model_config, cfg.optimizer, len(devices) if on_cpu else 1, log,
        save_model=cfg.save_model if writes else "",
        backup_dir="" if cfg.inference_only else cfg.backup_dir,
        export_dir=cfg.export_dir if writes else "",
        backup_copies=backups.BACKUPS_KEPT + 1,
        export_assets=memory.vocabulary_bytes(source.metadata),
        held_bytes=held,
    )  # fmt: skip
    for line in plan_lines:
        log(line)
    if cfg.mini_batch_size % replicas:
        raise ValueError(
            f"`mini_batch_size`={cfg.mini_batch_size} (the global batch) must be divisible by "
            f"the {replicas} replicas"
        )
    return plan


def host_bytes(plan: PlacementPlan, strategy: tf.distribute.Strategy, copies: bool) -> int:
    """What this process's devices hold under ``plan`` (logical CPUs share its memory);
    with ``copies``, plus the one-device copy that files of a model spread over workers
    are written from."""
    device_bytes = plan.device_bytes()
    local = len(_local_devices(strategy))
    if len(plan.devices) == local:
        return sum(device_bytes.values())
    held = device_bytes[plan.devices[worker_index(strategy)]]
    if copies:
        held += plan.mlp_bytes + sum(t.bytes for t in plan.tables)
    return held


def plan_devices(strategy: tf.distribute.Strategy) -> list[str]:
    """Every replica's device, e.g. ``CPU:0``, or ``worker 1 CPU:0`` over several workers
    (each worker is taken to have this process's devices)."""
    local = [d.split("/device:")[-1] for d in _local_devices(strategy)]
    workers = max(strategy.num_replicas_in_sync // len(local), 1)
    if workers == 1:
        return local
    return [f"worker {w} {d}" for w in range(workers) for d in local]


def plan_tables(
    model_config: ModelConfig, cfg: TrainConfig, strategy: tf.distribute.Strategy, log=print
) -> PlacementPlan:
    """Prints the ``embedding_placement`` plan; refuses a plan that spreads the tables
    over workers of several devices each, which training cannot do (each worker must
    run one replica)."""
    plan = plan_and_print(
        model_config, cfg.optimizer, plan_devices(strategy), cfg.embedding_placement, log
    )
    local = _local_devices(strategy)
    if plan.spread and len(plan.devices) > len(local) > 1:
        raise ConfigError(
            f"`embedding_placement`={cfg.embedding_placement}: spreading tables over workers "
            f"needs one device per worker, and each of these has {len(local)} (the plan above "
            "puts them on "
            f"{len(plan.devices)} devices); give each worker one device (e.g. one GPU), or "
            "use `embedding_placement`=replicated"
        )
    return plan


def table_devices(
    plan: PlacementPlan | None, strategy: tf.distribute.Strategy
) -> tuple[str | WorkerTable | None, ...] | None:
    """Each table's device under ``plan`` (its full TensorFlow name; over several
    workers a ``WorkerTable``), or ``None`` for a table on every device; ``None``
    when no table is spread."""
    if plan is None or not plan.spread:
        return None
    local = _local_devices(strategy)
    spread = [len(t.devices) < len(plan.devices) for t in plan.tables]
    if len(plan.devices) > len(local):  # several workers, one device each
        here = plan.devices[worker_index(strategy)]
        return tuple(
            WorkerTable(local[0], t.devices[0] == here) if s else None
            for t, s in zip(plan.tables, spread, strict=True)
        )
    full = {d.split("/device:")[-1]: d for d in local}
    return tuple(
        full[t.devices[0]] if s else None for t, s in zip(plan.tables, spread, strict=True)
    )


def build_state(
    model_config: ModelConfig,
    cfg: TrainConfig,
    source: DataSource,
    strategy,
    log=print,
    devices: tuple[str | None, ...] | None = None,
) -> RunState:
    """Builds and compiles the model under ``strategy`` (table ``k`` on ``devices[k]``
    alone when given, see ``table_devices``) and restores ``--load_model``."""
    with strategy.scope():
        model = build_model(model_config, jit_compile=cfg.jit_compile, table_devices=devices)
        if cfg.init == "reference":
            initialize_as_reference(model, model_config, _reference_stream(cfg, source))
        compile_model(model, cfg)
        model.optimizer.build(model.trainable_variables)
    best = None
    if cfg.load_model:
        model_files.restore_model_state(
            model, cfg.load_model, with_optimizer=not cfg.inference_only
        )
        step = int(model.optimizer.iterations.numpy())
        log(f"Loaded model state from {cfg.load_model} at step {step}")
        # The best test metrics travel with the model: a resumed run must beat them.
        best = model_files.saved_best_metrics(cfg.load_model)
    source = source.with_batches(cfg.mini_batch_size, cfg.test_batch_size)
    spread = spread_over_workers(model)
    evaluator = Evaluator(model, strategy, make_loss(cfg), exchanged=spread)
    has_test = source.has_test(cfg.test_freq)
    single = SingleDeviceCopy(model, strategy, lambda m: compile_model(m, cfg)) if spread else None
    return RunState(
        model, strategy, source, evaluator, has_test, is_chief(strategy), best=best, single=single
    )


def evaluate_only(state: RunState, log=print) -> RunResult:
    """``--inference_only``: evaluates the loaded model and prints the test line."""
    if not state.has_test:
        raise ValueError("`inference_only`: the data has no test split to evaluate")
    metrics = state.evaluator.evaluate(state.test_data())
    epoch, it = state.position_of(state.step)
    log(cb.format_test_line(it, state.steps, epoch, metrics, metrics))
    return RunResult(state.model, [], metrics, state.step, {}, state.chief)


def restore_backup(state: RunState, cfg: TrainConfig, log=print) -> None:
    """With ``--backup_dir``: resumes from its latest backup, and its best metrics."""
    if not cfg.backup_dir:
        return
    shards = task_names(state.strategy) if state.single else ()
    state.backup = backups.Backup(
        cfg.backup_dir, state.model, task=task_name(state.strategy), shards_of=shards
    )
    if state.backup.restore():
        log(f"Resumed from backup {state.backup.latest} at step {state.step}")
    if state.backup.best_metrics is not None:
        state.best = state.backup.best_metrics


def announce_nothing_to_train(state: RunState, cfg: TrainConfig, log=print) -> bool:
    """True, after saying so in one line, when the model already holds the run's steps.

    As with the reference's resume and Keras's ``initial_epoch``, the run's length
    is its total ``nepochs x steps``: a model at or past it trains no step.
    """
    total = cfg.nepochs * state.steps
    if state.step < total:
        return False
    source = cfg.load_model or (state.backup.latest if state.backup else "") or "the model"
    then = "it is only evaluated" if state.has_test else "there is no test data to evaluate it on"
    log(
        f"Nothing to train: the model from {source} is at step {state.step}, at or past this "
        f"run's {total} steps ({cfg.nepochs} epoch(s) of {state.steps}); {then}, and "
        "exported only if an export directory is given"
    )
    return True


def make_callbacks(
    state: RunState, model_config: ModelConfig, cfg: TrainConfig, log=print
) -> RunCallbacks:
    """The printer, the divergence guard, the evaluator, the best-model saver, the
    TensorBoard writer (chief only), the backups and the profiler of one run."""
    steps, chief = state.steps, state.chief
    position = cb.EpochPosition(steps, cfg.mini_batch_size)
    history = cb.RunHistory()
    printer = cb.ProgressPrinter(
        position, history, print_freq=cfg.print_freq, print_time=cfg.print_time,
        learning_rate=state.model.optimizer.learning_rate, log=log,
        progress_bar=cfg.progress_bar,
    )  # fmt: skip
    # The guard comes first: a non-finite loss stops the step before anything uses it.
    callbacks: list[keras.callbacks.Callback] = [cb.DivergenceGuard(position), printer]
    best = cb.BestMetrics(state.best)
    evaluator = saver = None
    if state.has_test:
        evaluator = cb.PeriodicEvaluator(
            position, history, test_freq=cfg.test_freq,
            evaluate=lambda: state.evaluator.evaluate(state.test_data()), best=best,
            log=printer.emit, exclude_time=printer.exclude_time,
        )  # fmt: skip
        callbacks.append(evaluator)
        if cfg.save_model and (chief or state.single):  # a spread model: all gather it
            saver = cb.BestModelSaver(cfg.save_model, state.save_model)
            evaluator.on_test.append(saver)
    hparams = run_hparams(model_config, cfg, state.strategy, describe_data(state.source))
    tb_dir = cfg.tensorboard_dir or os.path.join(cfg.run_dir, "tensorboard")
    run_tb_dir = tb_dir
    if chief:
        # This writer makes every TensorBoard scalar; Keras's TensorBoard callback would
        # add curves of other meanings (running means since the epoch's start).
        run_tb_dir = fresh_run_dir(tb_dir)
        writer = cb.TensorBoardWriter(run_tb_dir, printer.epoch_means, hparams)
        history.subscribers.append(writer.write)
        callbacks.append(writer)
    if state.backup is not None:
        callbacks.append(cb.BackupCallback(state.backup, cfg.backup_every, lambda: best.value))
    if cfg.enable_profiling and chief:
        callbacks.append(cb.ProfileCallback(tb_dir, min(5, steps), 3, log=printer.emit))
    return RunCallbacks(
        position, history, printer, best, evaluator, saver, run_tb_dir, hparams, callbacks
    )


def _reference_stream(cfg: TrainConfig, source: DataSource) -> np.random.RandomState:
    """The stream the reference draws its initial weights from (see ``reference_init``).

    With ``--debug_mode`` on random data the reference draws (to print) the first
    epoch's batches before it builds the model, so those draws come first.
    """
    if cfg.init not in INITIALIZERS:
        raise ConfigError(f"`init`={cfg.init!r}: must be one of {INITIALIZERS}")
    data = source.config
    if not (cfg.debug_mode and data.generation == "random"):
        return initial_stream(cfg.seed)
    return initial_stream(
        cfg.seed,
        batch_sizes(cfg.mini_batch_size, data.num_batches, data.data_size),
        table_sizes=source.table_sizes,
        num_dense=source.num_dense,
        num_indices_per_lookup=data.num_indices_per_lookup,
        num_indices_per_lookup_fixed=data.num_indices_per_lookup_fixed,
    )


def fresh_run_dir(base: str) -> str:
    """A new directory ``base/<YYYYmmdd-HHMMSS>[-N]`` for one run's TensorBoard events,
    so that runs sharing ``base`` never write into each other's curves."""
    name = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        path = os.path.join(base, name if n == 1 else f"{name}-{n}")
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def run(
    model_config: ModelConfig,
    train_config: TrainConfig,
    source: DataSource,
    strategy: tf.distribute.Strategy,
    log=print,
) -> RunResult:
    """Trains (or, with ``inference_only``, only evaluates) and returns the result."""
    cfg = train_config
    plan = prepare_run(model_config, cfg, source, strategy, log)
    state = build_state(
        model_config, cfg, source, strategy, log, devices=table_devices(plan, strategy)
    )
    if cfg.inference_only:
        return evaluate_only(state, log)
    restore_backup(state, cfg, log)
    announce_nothing_to_train(state, cfg, log)
    if cfg.debug_mode:  # the parameters the run starts from (loaded or resumed ones too)
        with np.printoptions(precision=cfg.print_precision):
            print_debug(state.model, model_config, state.source, cfg.mini_batch_size, log)
    cbs = make_callbacks(state, model_config, cfg, log)
    start_step = state.step
    started = time.time()
    extra = {"start_step": start_step, "steps_per_epoch": state.steps,
             "run": run_title(cbs.hparams)}  # fmt: skip
    try:
        fit_epochs(state, cfg, cbs)
    except cb.TrainingDivergedError:
        if state.chief:  # what was learnt up to the divergence stays readable
            write_history(cfg.run_dir, cbs, None, state.step, time.time() - started, extra)
        raise
    elapsed = time.time() - started
    extra["test_seconds"] = cbs.evaluator.test_seconds if cbs.evaluator else 0.0
    test_metrics = final_test(state, cbs)
    if cfg.debug_mode:
        with np.printoptions(precision=cfg.print_precision):
            print_parameters(state.model, "updated parameters (weights and bias):", log)
    if state.backup is not None:
        state.backup.save(force=True, best=cbs.best.value)
    model = state.model_to_write()
    artifacts = write_artifacts(state, cfg, cbs, test_metrics, elapsed, extra, log, model)
    return RunResult(
        model, cbs.history.records, test_metrics, state.step, artifacts, state.chief,
        training_model=state.model if state.single else None,
    )  # fmt: skip


def fit_epochs(state: RunState, cfg: TrainConfig, cbs: RunCallbacks) -> None:
    """One ``fit`` per epoch from the current step on (a resumed epoch skips its trained
    steps); raises ``OutOfDataError`` when an epoch's input ends early."""
    steps, start_step = state.steps, state.step
    for epoch in range(start_step // steps, cfg.nepochs):
        skip = max(0, start_step - epoch * steps)
        data = state.source.train_dataset(state.strategy, epoch=epoch, skip=skip)
        cbs.position.start(epoch, first_step=skip, examples=state.source.examples_per_epoch())
        before = state.step
        state.model.fit(
            data,
            initial_epoch=epoch,
            epochs=epoch + 1,
            steps_per_epoch=steps - skip,
            callbacks=cbs.callbacks,
            shuffle=False,
            verbose=0,  # the printer draws --progress_bar
        )
        _check_epoch_ran(state.model, before, steps - skip, epoch, state.source)


def final_test(state: RunState, cbs: RunCallbacks) -> dict | None:
    """The test metrics of the final model: evaluated unless the last step was."""
    if cbs.evaluator is None:
        return None
    if cbs.evaluator.last_test_step != state.step:
        # Its line names the step's epoch and iteration (a model loaded past the run's
        # end included).
        cbs.position.epoch, it = state.position_of(state.step)
        return cbs.evaluator.run_test(state.step, it=it)
    return cbs.history.records[-1].get("test")


def write_artifacts(
    state: RunState, cfg: TrainConfig, cbs: RunCallbacks, test_metrics: dict | None,
    elapsed: float, extra: dict, log=print, model: DLRM | None = None,
) -> dict[str, str]:  # fmt: skip
    """The chief writes ``history.json``, the model (``model``, default the run's; if
    not saved as best) and the plot; returns where each went."""
    if not state.chief:
        return {}
    artifacts = {
        "history": write_history(cfg.run_dir, cbs, test_metrics, state.step, elapsed, extra),
        "tensorboard": cbs.tensorboard_dir,
    }
    if cfg.save_model:
        if not state.has_test:  # nothing to rank models by: the trained model is the result
            model_files.save_model(model or state.model, cfg.save_model, metrics=test_metrics)
        elif not cbs.saver.saved:
            log(
                f"{cfg.save_model} not replaced: no evaluation beat the best test AUC "
                f"{cbs.best.value['auc']:.4f} carried from {cfg.load_model or 'earlier'}"
            )
        artifacts["model"] = cfg.save_model
    if cfg.plot and cbs.history.records:
        from dlrm_tf.reports.plot import plot_history

        png = plot_history(
            cbs.history.records,
            os.path.join(cfg.run_dir, "training.png"),
            title=run_title(cbs.hparams),
            loss_name=cfg.loss_function,
            print_freq=cfg.print_freq,
        )
        if png:
            artifacts["plot"] = png
    return artifacts


def write_history(
    run_dir: str, cbs: RunCallbacks, test: dict | None, steps: int, seconds: float, extra: dict
) -> str:
    """Writes ``run_dir/history.json`` (printed records, final test metrics, steps, run facts)."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "history.json")
    record = {
        "history": cbs.history.records,
        "test": test,
        "steps": steps,
        "seconds": seconds,
        "examples": cbs.printer.examples_seen,
        **extra,
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    return path
