"""One run from its configs: prepare the data, build the source and model, train, export.

``RunConfig`` holds every option of a run (built once, e.g. by
``dlrm_tf.flags.run_config``); ``execute`` runs it. Nothing here reads flags, so
a script or a test runs the same job from Python.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import tensorflow as tf

from dlrm_tf.config import ArtifactsConfig, ConfigError, ModelConfig, StrategyConfig
from dlrm_tf.training.data_sources import DataConfig, DataSource
from dlrm_tf.training.trainer import RunResult, TrainConfig
from input_pipeline.prepare import ConversionConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run needs.

    Attributes:
      data: where the examples come from.
      model: the architecture; with converted data its ``table_sizes`` are a
        placeholder replaced by the data's.
      train: how to train.
      strategy: devices and distribution.
      artifacts: the graph plot, ONNX file and SavedModel to write.
      conversion: how converted data is made or checked (None: generated data).
    """

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    strategy: StrategyConfig = StrategyConfig()
    artifacts: ArtifactsConfig = ArtifactsConfig()
    conversion: ConversionConfig | None = None


def make_strategy(config: StrategyConfig) -> tf.distribute.Strategy:
    """Chooses the devices (before TensorFlow initialises them) and the strategy."""
    from dlrm_tf.training.strategy import configure_devices
    from dlrm_tf.training.strategy import make_strategy as strategy_named

    devices = configure_devices(config.use_gpu, config.num_gpus, config.num_cpu_replicas)
    return strategy_named(config.distribution_strategy, devices)


def source_and_model(run: RunConfig) -> tuple[DataSource, ModelConfig]:
    """The run's ``DataSource`` and the architecture, table sizes taken from the data."""
    source = DataSource(run.data, run.model.table_sizes, run.model.num_dense)
    model_config = dataclasses.replace(run.model, table_sizes=source.table_sizes)
    if model_config.num_dense != source.num_dense:
        raise ConfigError(
            f"`bottom_mlp`={'-'.join(map(str, model_config.bottom_mlp))}: its input width "
            f"{model_config.num_dense} must equal the data's {source.num_dense} dense features"
        )
    return source, model_config


def set_up(run: RunConfig) -> tuple[tf.distribute.Strategy, DataSource, ModelConfig]:
    """The strategy, then the data (converted first if asked), source and architecture."""
    strategy = make_strategy(run.strategy)
    if run.conversion is not None:
        from input_pipeline.prepare import prepare

        prepare(run.conversion)
    source, model_config = source_and_model(run)
    return strategy, source, model_config


def execute(run: RunConfig) -> RunResult:
    """Runs the job ``run`` describes; returns ``train.RunResult``.

    Raises ConfigError / ValueError / FileNotFoundError / MemoryError /
    DeviceError with a message naming the config field (`field`) or file at fault.
    """
    from dlrm_tf.training import trainer as train

    strategy, source, model_config = set_up(run)
    with contextlib.ExitStack() as stack:
        if run.train.backup_dir and not run.train.inference_only:
            from dlrm_tf.training.backups import backup_lock
            from dlrm_tf.training.strategy import task_name

            stack.enter_context(backup_lock(run.train.backup_dir, task_name(strategy)))
        result = train.run(model_config, run.train, source, strategy)
    if result.chief:  # the chief writes the graph, the ONNX file and the export
        write_artifacts(run, source, result)
    return result


def write_artifacts(run: RunConfig, source: DataSource, result: RunResult) -> None:
    """Writes the compute graph, the ONNX file and the SavedModel ``run`` asks for."""
    artifacts, cfg = run.artifacts, run.train
    if artifacts.plot_compute_graph:
        from dlrm_tf.reports.graph_plot import plot_compute_graph

        tb_dir = cfg.tensorboard_dir or os.path.join(cfg.run_dir, "tensorboard")
        result.artifacts["compute_graph"] = plot_compute_graph(
            result.model,
            os.path.join(cfg.run_dir, "compute_graph.png"),
            log_dir=os.path.join(tb_dir, "graph"),
        )
    if artifacts.save_onnx:
        from export.onnx_export import save_onnx

        features, _ = source.sample_batches(min(cfg.mini_batch_size, 256), 1)[0]
        result.artifacts["onnx"] = save_onnx(result.model, artifacts.save_onnx, features)
    if artifacts.export_dir and not cfg.inference_only:
        from export.saved_model import export_model

        raw = None
        if source.from_files:
            from input_pipeline.criteo import RawPreprocessor

            raw = RawPreprocessor.from_metadata(run.data.processed_data_dir)
        result.artifacts["saved_model"] = export_model(
            result.model, artifacts.export_dir, raw_preprocessor=raw
        )
