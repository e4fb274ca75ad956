"""``python -m dlrm_tf.main --flagfile=configs/X.flags``: train, evaluate and export DLRM.

Data flows one way: flags -> configs -> data source + model -> trainer -> export.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) hides the run's own
# output; TF_CPP_MIN_LOG_LEVEL=0 in the environment brings it back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
from absl import app, flags, logging

from dlrm_tf import flags as dlrm_flags  # noqa: F401  (defines the flags)
from dlrm_tf.config import ConfigError, ModelConfig, parse_dash_list
from dlrm_tf.data import DataConfig
from dlrm_tf.train import TrainConfig

FLAGS = flags.FLAGS


def _loss_weights(text: str) -> tuple[float, float]:
    parts = text.split("-")
    try:
        w0, w1 = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"--loss_weights={text!r}: expected two numbers 'w0-w1', e.g. '1.0-3.0'"
        ) from None
    return w0, w1


def _explicit(name: str) -> bool:
    return FLAGS[name].present > 0


def data_config_from_flags() -> DataConfig:
    """The data settings, with the reference's silent traps turned into errors."""
    processed = FLAGS.processed_data_dir or FLAGS.processed_data_file
    if FLAGS.data_generation != "dataset" and processed:
        raise ConfigError(
            f"--processed_data_dir={processed} is given but --data_generation="
            f"{FLAGS.data_generation}: add --data_generation=dataset to train on it "
            "(refusing to train on generated data instead)"
        )
    if FLAGS.data_generation == "dataset" and not processed:
        raise ConfigError(
            "--data_generation=dataset needs --processed_data_dir (a directory written by "
            "`python -m input_pipeline.convert`)"
        )
    if FLAGS.data_generation == "dataset" and _explicit("arch_embedding_size"):
        raise ConfigError(
            "--arch_embedding_size is for generated data; with --data_generation=dataset the "
            "table sizes come from the data's metadata.json: drop the flag"
        )
    for name in ("mini_batch_size", "nepochs", "print_freq", "num_indices_per_lookup"):
        if FLAGS[name].value <= 0:
            raise ConfigError(f"--{name}={FLAGS[name].value}: must be a positive integer")
    for name in ("num_batches", "test_num_batches"):
        if FLAGS[name].value < 0:
            raise ConfigError(f"--{name}={FLAGS[name].value}: must be >= 0 (0 = all the data)")
    if FLAGS.data_generation != "dataset" and FLAGS.num_batches <= 0 and FLAGS.data_size <= 0:
        raise ConfigError("--data_size must be positive (or give --num_batches)")
    return DataConfig(
        generation=FLAGS.data_generation,
        processed_data_dir=processed,
        data_size=FLAGS.data_size,
        num_batches=FLAGS.num_batches,
        test_num_batches=FLAGS.test_num_batches,
        num_indices_per_lookup=FLAGS.num_indices_per_lookup,
        num_indices_per_lookup_fixed=FLAGS.num_indices_per_lookup_fixed,
        round_targets=FLAGS.round_targets,
        trace_file=FLAGS.data_trace_file,
        trace_padding=FLAGS.data_trace_enable_padding,
        seed=FLAGS.numpy_rand_seed,
    )


def model_config_from_flags(table_sizes: tuple[int, ...] | None = None) -> ModelConfig:
    """The architecture; ``table_sizes`` overrides --arch_embedding_size (converted data)."""
    if table_sizes is None:
        table_sizes = parse_dash_list(FLAGS.arch_embedding_size, "arch_embedding_size")
    return ModelConfig(
        embedding_dim=FLAGS.arch_sparse_feature_size,
        table_sizes=tuple(table_sizes),
        bottom_mlp=parse_dash_list(FLAGS.arch_mlp_bot, "arch_mlp_bot"),
        top_mlp=parse_dash_list(FLAGS.arch_mlp_top, "arch_mlp_top"),
        interaction=FLAGS.arch_interaction_op,
        interaction_itself=FLAGS.arch_interaction_itself,
        loss_threshold=FLAGS.loss_threshold,
    )


def train_config_from_flags(run_dir: str) -> TrainConfig:
    """How to train, from the flags."""
    if FLAGS.inference_only and not FLAGS.load_model:
        raise ConfigError("--inference_only needs --load_model=PATH (the model to evaluate)")
    if FLAGS.save_model and not FLAGS.save_model.endswith(".keras"):
        raise ConfigError(f"--save_model={FLAGS.save_model}: the file name must end in .keras")
    if FLAGS.backup_every <= 0:
        raise ConfigError(f"--backup_every={FLAGS.backup_every}: must be positive")
    return TrainConfig(
        mini_batch_size=FLAGS.mini_batch_size,
        nepochs=FLAGS.nepochs,
        learning_rate=FLAGS.learning_rate,
        optimizer=FLAGS.optimizer,
        loss_function=FLAGS.loss_function,
        loss_weights=_loss_weights(FLAGS.loss_weights),
        round_targets=FLAGS.round_targets,
        lr_num_warmup_steps=FLAGS.lr_num_warmup_steps,
        lr_decay_start_step=FLAGS.lr_decay_start_step,
        lr_num_decay_steps=FLAGS.lr_num_decay_steps,
        seed=FLAGS.numpy_rand_seed,
        print_freq=FLAGS.print_freq,
        print_time=FLAGS.print_time,
        test_freq=FLAGS.test_freq,
        test_mini_batch_size=FLAGS.test_mini_batch_size,
        debug_mode=FLAGS.debug_mode,
        print_precision=FLAGS.print_precision,
        enable_profiling=FLAGS.enable_profiling,
        inference_only=FLAGS.inference_only,
        save_model=FLAGS.save_model,
        load_model=FLAGS.load_model,
        run_dir=run_dir,
        tensorboard_dir=FLAGS.tensorboard_dir,
        backup_dir=FLAGS.backup_dir,
        backup_every=FLAGS.backup_every,
        export_dir=FLAGS.export_dir,
        mixed_precision=FLAGS.mixed_precision,
        jit_compile=FLAGS.jit_compile,
        steps_per_execution=FLAGS.steps_per_execution,
        plot=FLAGS.plot,
        progress_bar=FLAGS.progress_bar,
        config_file=",".join(_flagfiles(sys.argv)),
    )


def _flagfiles(argv: list[str]) -> list[str]:
    """The --flagfile arguments of a command line (absl keeps no record of them)."""
    found = []
    for i, arg in enumerate(argv):
        if arg.startswith("--flagfile="):
            found.append(arg.split("=", 1)[1])
        elif arg == "--flagfile" and i + 1 < len(argv):
            found.append(argv[i + 1])
    return found


def _prepare_generated_criteo(data_dir: str, rows: int, seed: int) -> None:
    """Generates Criteo-shaped text with a planted signal and converts it into ``data_dir``.

    Does nothing if ``data_dir`` already holds converted data. Prints the AUC of
    the planted (Bayes-optimal) model on the test split: the ceiling training
    can approach.
    """
    if os.path.exists(os.path.join(data_dir, "metadata.json")):
        print(f"Using the converted data already in {data_dir}")
        return
    from input_pipeline import convert, synthetic

    raw = os.path.join(os.path.dirname(os.path.abspath(data_dir)), "generated_train.txt")
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    started = time.time()
    written = synthetic.write_text(raw, num_rows=rows, seed=seed)
    print(f"Generated {rows:,} Criteo-shaped rows with a planted signal: {raw}")
    metadata = convert.convert(
        "kaggle",
        raw,
        data_dir,
        max_ind_range=max(FLAGS.max_ind_range, 0),
        block_rows=1024,
    )
    # The test split is the first half of the last of 7 "days", in file order.
    days = convert.kaggle_day_sizes(rows)
    start = sum(days[:6])
    test = slice(start, start + days[6] // 2)
    ceiling = synthetic.oracle_auc(written.probabilities[test], written.labels[test])
    print(
        f"Converted them to TFRecords in {data_dir} ({time.time() - started:.1f} s): "
        f"{metadata['rows']}; the planted model's test AUC (the ceiling) is {ceiling:.4f}"
    )


def strategy_from_flags() -> tf.distribute.Strategy:
    """Chooses the devices (before TensorFlow initialises them) and the strategy."""
    from dlrm_tf.strategy import configure_devices, make_strategy

    devices = configure_devices(FLAGS.use_gpu, FLAGS.num_gpus, FLAGS.num_cpu_replicas)
    return make_strategy(FLAGS.distribution_strategy, devices)


def source_and_model_config(data_config: DataConfig):
    """The run's ``DataSource`` and the architecture, table sizes taken from the data."""
    from dlrm_tf.data import DataSource

    placeholder = parse_dash_list(FLAGS.arch_embedding_size, "arch_embedding_size")
    num_dense = parse_dash_list(FLAGS.arch_mlp_bot, "arch_mlp_bot")[0]
    source = DataSource(data_config, placeholder, num_dense)
    model_config = model_config_from_flags(source.table_sizes)
    if model_config.num_dense != source.num_dense:
        raise ConfigError(
            f"--arch_mlp_bot={FLAGS.arch_mlp_bot}: its input width {model_config.num_dense} "
            f"must equal the data's {source.num_dense} dense features"
        )
    return source, model_config


def execute():
    """Runs the job the parsed flags describe; returns ``train.RunResult``.

    Raises ConfigError / ValueError / FileNotFoundError / MemoryError /
    DeviceError with a message naming the flag or file at fault.
    """
    from dlrm_tf import train

    run_dir = FLAGS.run_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    data_config = data_config_from_flags()
    train_config = train_config_from_flags(run_dir)
    if FLAGS.data_generation != "dataset":
        model_config_from_flags()  # validate the architecture before any heavy work
    strategy = strategy_from_flags()

    if FLAGS.generate_criteo_rows > 0:
        _prepare_generated_criteo(
            data_config.processed_data_dir, FLAGS.generate_criteo_rows, FLAGS.numpy_rand_seed
        )
    source, model_config = source_and_model_config(data_config)
    with contextlib.ExitStack() as stack:
        if FLAGS.backup_dir and not FLAGS.inference_only:
            from dlrm_tf.checkpoints import backup_lock
            from dlrm_tf.strategy import task_name

            stack.enter_context(backup_lock(FLAGS.backup_dir, task_name(strategy)))
        result = train.run(model_config, train_config, source, strategy)

    if not result.chief:
        return result  # the chief writes the graph, the ONNX file and the export
    if FLAGS.plot_compute_graph:
        from dlrm_tf.graph_plot import plot_compute_graph

        tb_dir = FLAGS.tensorboard_dir or os.path.join(run_dir, "tensorboard")
        result.artifacts["compute_graph"] = plot_compute_graph(
            result.model,
            os.path.join(run_dir, "compute_graph.png"),
            log_dir=os.path.join(tb_dir, "graph"),
        )
    if FLAGS.save_onnx:
        from dlrm_tf.onnx_export import save_onnx

        features, _ = source.sample_batches(min(FLAGS.mini_batch_size, 256), 1)[0]
        result.artifacts["onnx"] = save_onnx(result.model, FLAGS.save_onnx, features)

    if FLAGS.export_dir and not FLAGS.inference_only:
        from export.saved_model import export_model

        raw = None
        if source.from_files:
            from input_pipeline.criteo import RawPreprocessor

            raw = RawPreprocessor.from_metadata(data_config.processed_data_dir)
        result.artifacts["saved_model"] = export_model(
            result.model, FLAGS.export_dir, raw_preprocessor=raw
        )
    return result


def main(argv: list[str]) -> int:
    """The CLI: runs the job, prints where each artifact went; exit 2 on bad input."""
    del argv
    from input_pipeline import errors

    started = time.time()
    try:
        result = execute()
    except Exception as err:  # noqa: BLE001  (every failure: one line, exit 2; --verbose)
        return errors.report(err)
    history = result.artifacts.get("history")
    if history:
        import json

        from dlrm_tf.summary import format_summary, run_summary

        with open(history) as f:
            summary = run_summary(json.load(f))
        print(format_summary(summary, result.artifacts, time.time() - started))
    else:
        for name, path in result.artifacts.items():
            print(f"{name}: {path}")
    return 0


def run() -> None:
    """Console-script entry point (``dlrm-tf``)."""
    from input_pipeline.errors import parse_absl_flags

    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_absl_flags)


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    run()
