"""Command-line flags: the reference DLRM's options in snake_case, plus this project's own.

Only ``main`` reads these; everything else takes the typed configs of
``dlrm_tf.config`` / ``dlrm_tf.train``.
"""

from __future__ import annotations

from absl import flags

from dlrm_tf.config import INTERACTIONS, LOSSES, OPTIMIZERS

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
flags.DEFINE_enum("data_set", "kaggle", ["kaggle", "terabyte"], "Criteo data set.")
flags.DEFINE_string("raw_data_file", "", "Raw Criteo data (for conversion).")
flags.DEFINE_string(
    "processed_data_dir", "", "Directory written by `python -m input_pipeline.convert`."
)
flags.DEFINE_string(
    "processed_data_file", "", "Alias of --processed_data_dir (the reference's name)."
)
flags.DEFINE_integer("max_ind_range", -1, "Cap on categorical ids (conversion).")
flags.DEFINE_float("data_sub_sample_rate", 0.0, "Negative down-sampling rate (conversion).")
flags.DEFINE_enum("data_randomize", "total", ["total", "day", "none"], "Shuffling (conversion).")
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
    "mixed_precision", "none", ["none", "bfloat16", "float16"], "Mixed-precision policy."
)
flags.DEFINE_bool("jit_compile", False, "XLA-compile the MLPs and the interaction.")
flags.DEFINE_integer("steps_per_execution", 1, "Training steps per tf.function call.")
flags.DEFINE_bool("verbose", False, "On failure, print the traceback after the error line.")

FLAGS = flags.FLAGS
