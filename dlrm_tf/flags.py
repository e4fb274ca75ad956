"""Command-line flags (the reference's names in snake_case) and the run's configs from them.

The reference DLRM's options plus this project's own, and their translation into
the typed configs of a run (``run_config``).

Only ``run_config`` and its helpers read these; everything else takes the typed
configs of ``dlrm_tf.config`` / ``dlrm_tf.training.data_sources`` / ``dlrm_tf.training.trainer`` /
``dlrm_tf.job``. Library errors name config fields; ``FIELD_FLAGS`` maps those
whose flag has another name, so the command line's errors name the flag.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from dlrm_tf.config import (
    INITIALIZERS,
    INTERACTIONS,
    LOSSES,
    OPTIMIZERS,
    PLACEMENTS,
    ArtifactsConfig,
    ConfigError,
    ModelConfig,
    StrategyConfig,
    parse_dash_list,
)
from dlrm_tf.job import RunConfig
from dlrm_tf.training.data_sources import DataConfig
from dlrm_tf.training.trainer import TrainConfig
from input_pipeline.errors import parse_absl_flags, run_cli
from input_pipeline.prepare import ConversionConfig

# --- architecture (the reference's names and defaults) ---
flags.DEFINE_integer("arch_sparse_feature_size", 2, "Embedding dimension d.")
flags.DEFINE_string(
    "arch_embedding_size", "4-3-2", "Rows per embedding table, '-'-separated (random data)."
)
flags.DEFINE_string("arch_mlp_bot", "4-3-2", "Bottom MLP widths including its input width.")
flags.DEFINE_string("arch_mlp_top", "4-2-1", "Top MLP widths; its input width is added.")
flags.DEFINE_enum("arch_interaction_op", "dot", list(INTERACTIONS), "Feature interaction.")
flags.DEFINE_bool("arch_interaction_itself", False, "Keep self dot products too.")

# --- data ---
flags.DEFINE_enum(
    "data_generation",
    "random",
    ["random", "dataset", "synthetic"],
    "random: the reference's random data; dataset: converted TFRecords "
    "(--processed_data_dir); synthetic: ids replayed from access traces (--data_trace_file).",
)
flags.DEFINE_integer("data_size", 1, "Examples of random data (with --num_batches=0).")
flags.DEFINE_integer("num_batches", 0, "Batches per epoch; 0 = all the data.")
flags.DEFINE_enum(
    "data_set",
    "kaggle",
    ["kaggle", "terabyte"],
    "Criteo data set of --raw_data_file (its split rule); checked against converted data.",
)
flags.DEFINE_string(
    "raw_data_file",
    "",
    "Raw Criteo text (file, directory or glob): converted into --processed_data_dir "
    "first if that holds no converted data, else checked against its metadata.",
)
flags.DEFINE_string(
    "processed_data_dir", "", "Directory written by `python -m input_pipeline.convert`."
)
flags.DEFINE_string(
    "processed_data_file", "", "Alias of --processed_data_dir (the reference's name)."
)
flags.DEFINE_integer(
    "max_ind_range", -1, "Conversion: hash categorical ids modulo this (<= 0: vocabulary ids)."
)
flags.DEFINE_float(
    "data_sub_sample_rate", 0.0, "Conversion: fraction of negative training rows dropped."
)
flags.DEFINE_enum(
    "data_randomize",
    "total",
    ["total", "day", "none"],
    "Conversion: shuffle training rows across days, within each day, or not at all.",
)
flags.DEFINE_integer("num_indices_per_lookup", 10, "Ids per bag (random/synthetic data).")
flags.DEFINE_bool("num_indices_per_lookup_fixed", False, "Use exactly that many ids per bag.")
flags.DEFINE_string(
    "data_trace_file", "./input/dist_emb_j.log", "Trace distribution files; 'j' = table index."
)
flags.DEFINE_bool("data_trace_enable_padding", False, "Trace data: pad when new ids run out.")
flags.DEFINE_integer(
    "generate_criteo_rows",
    0,
    "If > 0 and --processed_data_dir holds no data yet: generate this many rows of "
    "Criteo-shaped text with a planted signal and convert them there first.",
)
flags.DEFINE_bool("round_targets", False, "Round labels to 0/1.")

# --- training ---
flags.DEFINE_integer("mini_batch_size", 1, "Global training batch size.")
flags.DEFINE_integer("nepochs", 1, "Epochs.")
flags.DEFINE_float("learning_rate", 0.01, "Learning rate.")
flags.DEFINE_enum("optimizer", "sgd", list(OPTIMIZERS), "Optimizer (sparse updates).")
flags.DEFINE_integer("numpy_rand_seed", 123, "Seed of data generation and initialisation.")
flags.DEFINE_enum(
    "init",
    "keras",
    list(INITIALIZERS),
    "Initial weights: keras = Keras's generator seeded with --numpy_rand_seed; reference = "
    "the reference's np.random.RandomState(--numpy_rand_seed) draws, in its order.",
)
flags.DEFINE_enum("loss_function", "mse", list(LOSSES), "Loss.")
flags.DEFINE_string("loss_weights", "1.0-1.0", "wbce weights 'w0-w1' for labels 0 and 1.")
flags.DEFINE_float("loss_threshold", 0.0, "Clamp probabilities to [t, 1-t] (0 = off).")
flags.DEFINE_integer("lr_num_warmup_steps", 0, "Linear warm-up steps.")
flags.DEFINE_integer("lr_decay_start_step", 0, "Step where polynomial decay starts.")
flags.DEFINE_integer("lr_num_decay_steps", 0, "Steps of polynomial decay (0 = none).")

# --- run control ---
flags.DEFINE_integer("print_freq", 1, "Print training progress every N iterations.")
flags.DEFINE_integer("test_freq", -1, "Evaluate every N iterations (-1 = at epoch ends only).")
flags.DEFINE_integer("test_mini_batch_size", -1, "Test batch size (-1 = mini_batch_size).")
flags.DEFINE_integer("test_num_batches", 0, "Cap on test batches per evaluation (0 = all).")
flags.DEFINE_bool("print_time", False, "Print ms/it.")
flags.DEFINE_bool("progress_bar", False, "Show Keras's progress bar besides the printed lines.")
flags.DEFINE_bool("debug_mode", False, "Print architecture, data and parameters.")
flags.DEFINE_integer("print_precision", 5, "Decimals of the arrays --debug_mode prints.")
flags.DEFINE_bool("enable_profiling", False, "Capture a profile of a few steps for TensorBoard.")
flags.DEFINE_bool("inference_only", False, "Only evaluate the model given by --load_model.")
flags.DEFINE_string("save_model", "", "Keep the best model (by test AUC) here (.keras).")
flags.DEFINE_string("load_model", "", "Start from this saved model (.keras), with its state.")
flags.DEFINE_string("run_dir", "", "Directory for this run's artifacts (default ./runs/<time>).")
flags.DEFINE_string("tensorboard_dir", "", "TensorBoard logs (default <run_dir>/tensorboard).")
flags.DEFINE_string("backup_dir", "", "Crash-safe backups; a rerun resumes from the last one.")
flags.DEFINE_integer("backup_every", 1000, "Steps between backups.")
flags.DEFINE_string("export_dir", "", "Export a SavedModel for TF Serving here after training.")
flags.DEFINE_bool(
    "plot_compute_graph",
    False,
    "Draw the model's compute graph: <run_dir>/compute_graph.png with pydot + graphviz, "
    "else a TensorBoard graph in <tensorboard_dir>/graph.",
)
flags.DEFINE_string(
    "save_onnx",
    "",
    "Also export the trained model to this .onnx file (needs the 'onnx' extra); "
    "checked against Keras with onnxruntime.",
)
flags.DEFINE_bool("plot", True, "Write a PNG of loss/accuracy/AUC against iterations.")

# --- devices and speed ---
flags.DEFINE_enum(
    "distribution_strategy",
    "auto",
    ["auto", "one_device", "mirrored", "multi_worker_mirrored"],
    "tf.distribute strategy; auto = mirrored over all GPUs if several, else one device.",
)
flags.DEFINE_bool("use_gpu", False, "Train on GPU(s); fails if there is none.")
flags.DEFINE_integer("num_gpus", 0, "GPUs to use with --use_gpu (0 = all).")
flags.DEFINE_integer(
    "num_cpu_replicas", 0, "Split the CPU into N logical devices (tests the mirrored path)."
)
flags.DEFINE_enum(
    "embedding_placement",
    "replicated",
    list(PLACEMENTS),
    "Where the embedding tables live on several devices: a copy on every device, "
    "table_wise (each table on one device, memory-balanced), or auto (tables under 1 MiB "
    "copied, the rest table_wise). Spreading works over one machine's devices "
    "(MirroredStrategy); over several workers the plan is printed and the run stops.",
)
flags.DEFINE_enum(
    "mixed_precision", "none", ["none", "bfloat16", "float16"], "Mixed-precision policy."
)
flags.DEFINE_bool("jit_compile", False, "XLA-compile the MLPs and the interaction.")
flags.DEFINE_integer("steps_per_execution", 1, "Training steps per tf.function call.")
flags.DEFINE_bool("verbose", False, "On failure, print the traceback after the error line.")

FLAGS = flags.FLAGS

# --- flags -> configs ---

# Config fields whose flag has another name (a field named like its flag needs no entry).
FIELD_FLAGS = {
    "embedding_dim": "arch_sparse_feature_size",
    "table_sizes": "arch_embedding_size",
    "bottom_mlp": "arch_mlp_bot",
    "top_mlp": "arch_mlp_top",
    "interaction": "arch_interaction_op",
    "interaction_itself": "arch_interaction_itself",
    "generation": "data_generation",
    "trace_file": "data_trace_file",
    "trace_padding": "data_trace_enable_padding",
    "seed": "numpy_rand_seed",
    "output_dir": "processed_data_dir",  # the converter's name for it
    "generate_rows": "generate_criteo_rows",
}
# The conversion flags: they describe converted data (generated data makes its own).
CONVERSION_FLAGS = (
    "data_set",
    "raw_data_file",
    "data_randomize",
    "data_sub_sample_rate",
    "max_ind_range",
)


def _explicit(values: flags.FlagValues, name: str) -> bool:
    return values[name].present > 0


def _loss_weights(text: str) -> tuple[float, float]:
    try:
        w0, w1 = (float(p) for p in text.split("-"))
    except ValueError:
        raise ConfigError(
            f"--loss_weights={text!r}: expected two numbers 'w0-w1', e.g. '1.0-3.0'"
        ) from None
    return w0, w1


def _check_data_flags(values: flags.FlagValues, ignore_table_sizes: bool) -> str:
    """The reference's silent traps turned into errors; returns the processed dir."""
    processed = values.processed_data_dir or values.processed_data_file
    generation = values.data_generation
    if generation != "dataset" and processed:
        raise ConfigError(
            f"--processed_data_dir={processed} is given but --data_generation="
            f"{generation}: add --data_generation=dataset to train on it "
            "(refusing to train on generated data instead)"
        )
    if generation != "dataset":
        for name in CONVERSION_FLAGS:
            if _explicit(values, name):
                raise ConfigError(
                    f"--{name} describes Criteo data and --data_generation={generation} "
                    "makes its own: add --data_generation=dataset --processed_data_dir=DIR, "
                    f"or drop --{name}"
                )
    if generation == "dataset" and not processed:
        raise ConfigError(
            "--data_generation=dataset needs --processed_data_dir (a directory written by "
            "`python -m input_pipeline.convert`, or one --raw_data_file is converted into)"
        )
    if generation == "dataset" and _explicit(values, "arch_embedding_size"):
        if not ignore_table_sizes:
            raise ConfigError(
                "--arch_embedding_size is for generated data; with --data_generation=dataset "
                "the table sizes come from the data's metadata.json: drop the flag"
            )
    for name in ("mini_batch_size", "nepochs", "print_freq", "num_indices_per_lookup"):
        if values[name].value <= 0:
            raise ConfigError(f"--{name}={values[name].value}: must be a positive integer")
    for name in ("num_batches", "test_num_batches"):
        if values[name].value < 0:
            raise ConfigError(f"--{name}={values[name].value}: must be >= 0 (0 = all the data)")
    if generation != "dataset" and values.num_batches <= 0 and values.data_size <= 0:
        raise ConfigError("--data_size must be positive (or give --num_batches)")
    return processed


def data_config(values: flags.FlagValues, ignore_table_sizes: bool = False) -> DataConfig:
    """The data settings; ``ignore_table_sizes`` lets --arch_embedding_size stand
    (unused) beside converted data, as a shared flag file may set it."""
    processed = _check_data_flags(values, ignore_table_sizes)
    return DataConfig(
        generation=values.data_generation,
        processed_data_dir=processed,
        data_size=values.data_size,
        num_batches=values.num_batches,
        test_num_batches=values.test_num_batches,
        num_indices_per_lookup=values.num_indices_per_lookup,
        num_indices_per_lookup_fixed=values.num_indices_per_lookup_fixed,
        round_targets=values.round_targets,
        trace_file=values.data_trace_file,
        trace_padding=values.data_trace_enable_padding,
        seed=values.numpy_rand_seed,
    )


def conversion_config(values: flags.FlagValues, data: DataConfig) -> ConversionConfig | None:
    """How converted data is made (--raw_data_file, --generate_criteo_rows) or what
    it must have been made with (the conversion flags given); None for generated data."""
    if data.generation != "dataset":
        return None
    raw = values.raw_data_file

    # With a raw file every setting counts (the conversion uses it); without one,
    # only the settings given are checked against the existing data.
    def given(name: str):
        return values[name].value if raw or _explicit(values, name) else None

    max_ind_range = given("max_ind_range")
    return ConversionConfig(
        processed_data_dir=data.processed_data_dir,
        raw_data_file=raw,
        data_set=given("data_set"),
        max_ind_range=None if max_ind_range is None else max(max_ind_range, 0),
        data_randomize=given("data_randomize"),
        data_sub_sample_rate=given("data_sub_sample_rate"),
        seed=values.numpy_rand_seed,
        generate_rows=max(values.generate_criteo_rows, 0),
    )


def model_config(values: flags.FlagValues) -> ModelConfig:
    """The architecture (with converted data the table sizes are replaced by the data's)."""
    return ModelConfig(
        embedding_dim=values.arch_sparse_feature_size,
        table_sizes=parse_dash_list(values.arch_embedding_size, "arch_embedding_size"),
        bottom_mlp=parse_dash_list(values.arch_mlp_bot, "arch_mlp_bot"),
        top_mlp=parse_dash_list(values.arch_mlp_top, "arch_mlp_top"),
        interaction=values.arch_interaction_op,
        interaction_itself=values.arch_interaction_itself,
        loss_threshold=values.loss_threshold,
    )


def train_config(values: flags.FlagValues, run_dir: str) -> TrainConfig:
    """How to train, from the flags."""
    if values.inference_only and not values.load_model:
        raise ConfigError("--inference_only needs --load_model=PATH (the model to evaluate)")
    if values.save_model and not values.save_model.endswith(".keras"):
        raise ConfigError(f"--save_model={values.save_model}: the file name must end in .keras")
    if values.backup_every <= 0:
        raise ConfigError(f"--backup_every={values.backup_every}: must be positive")
    return TrainConfig(
        mini_batch_size=values.mini_batch_size,
        nepochs=values.nepochs,
        learning_rate=values.learning_rate,
        optimizer=values.optimizer,
        loss_function=values.loss_function,
        loss_weights=_loss_weights(values.loss_weights),
        round_targets=values.round_targets,
        lr_num_warmup_steps=values.lr_num_warmup_steps,
        lr_decay_start_step=values.lr_decay_start_step,
        lr_num_decay_steps=values.lr_num_decay_steps,
        seed=values.numpy_rand_seed,
        init=values.init,
        print_freq=values.print_freq,
        print_time=values.print_time,
        test_freq=values.test_freq,
        test_mini_batch_size=values.test_mini_batch_size,
        debug_mode=values.debug_mode,
        print_precision=values.print_precision,
        enable_profiling=values.enable_profiling,
        inference_only=values.inference_only,
        save_model=values.save_model,
        load_model=values.load_model,
        run_dir=run_dir,
        tensorboard_dir=values.tensorboard_dir,
        backup_dir=values.backup_dir,
        backup_every=values.backup_every,
        export_dir=values.export_dir,
        mixed_precision=values.mixed_precision,
        embedding_placement=values.embedding_placement,
        jit_compile=values.jit_compile,
        steps_per_execution=values.steps_per_execution,
        plot=values.plot,
        progress_bar=values.progress_bar,
        config_file=",".join(flagfiles(sys.argv)),
    )


def flagfiles(argv: Sequence[str]) -> list[str]:
    """The --flagfile arguments of a command line (absl keeps no record of them)."""
    found = []
    for i, arg in enumerate(argv):
        if arg.startswith("--flagfile="):
            found.append(arg.split("=", 1)[1])
        elif arg == "--flagfile" and i + 1 < len(argv):
            found.append(argv[i + 1])
    return found


def run_config(
    values: flags.FlagValues, default_run_dir: str, ignore_table_sizes: bool = False
) -> RunConfig:
    """Every option of a run, from the parsed flags (checked once, here).

    Args:
      values: the parsed flags (``flags.FLAGS``).
      default_run_dir: the run directory when --run_dir is not given.
      ignore_table_sizes: see ``data_config``.

    Raises:
      ConfigError: a flag's value or a combination of flags is invalid.
    """
    data = data_config(values, ignore_table_sizes)
    return RunConfig(
        data=data,
        model=model_config(values),
        train=train_config(values, values.run_dir or default_run_dir),
        strategy=StrategyConfig(
            distribution_strategy=values.distribution_strategy,
            use_gpu=values.use_gpu,
            num_gpus=values.num_gpus,
            num_cpu_replicas=values.num_cpu_replicas,
        ),
        artifacts=ArtifactsConfig(
            plot_compute_graph=values.plot_compute_graph,
            save_onnx=values.save_onnx,
            export_dir=values.export_dir,
        ),
        conversion=conversion_config(values, data),
    )


def run_app(main: Callable[[list[str]], object]) -> None:
    """Runs ``main(argv)`` as an absl app on these flags, for the commands beside the
    trainer's (the benches): a bad flag, or any failure of ``main``, is one
    ``error:`` line naming the flag, and exit status 2."""
    app.run(lambda argv: run_cli(lambda: main(argv), FIELD_FLAGS), flags_parser=parse_absl_flags)
