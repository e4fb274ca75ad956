"""Typed configuration, built once from flags and passed down (flags -> config -> parts).

Nothing below this module reads flags: the model, the data readers and the trainer
take these dataclasses, so they can be used from Python without the CLI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

INTERACTIONS = ("dot", "cat")
LOSSES = ("mse", "bce", "wbce")
# Float32 values each optimizer keeps per parameter (Adagrad's accumulator, Adam's
# two moments); its keys are the optimizers' names.
OPTIMIZER_SLOTS = {"sgd": 0, "adagrad": 1, "adam": 2}
OPTIMIZERS = tuple(OPTIMIZER_SLOTS)
# Where the embedding tables live on several devices (``dlrm_tf.training.placement``):
# a copy on every device, each table on one device, or small tables copied, the rest spread.
PLACEMENTS = ("replicated", "table_wise", "auto")
# Where the initial weights come from: Keras's generator, or the reference's NumPy draws.
INITIALIZERS = ("keras", "reference")


class ConfigError(ValueError):
    """A configuration value is invalid.

    The message names the config field at fault as `field` (backquoted); a command
    line shows it as its flag (``input_pipeline.errors.with_flag_names``).
    """


def dot_pairs(num_features: int, self_interaction: bool) -> int:
    """Number of pairwise dot products the dot interaction keeps among ``num_features``
    vectors: the lower triangle, with the diagonal when ``self_interaction``."""
    if self_interaction:
        return num_features * (num_features + 1) // 2
    return num_features * (num_features - 1) // 2


def parse_dash_list(text: str, flag: str) -> tuple[int, ...]:
    """Parses the reference's dash-separated integer lists such as ``"13-512-256-64-16"``.

    Args:
      text: the flag's value.
      flag: the field's (or flag's) name, used in error messages.

    Returns:
      The integers, in order.

    Raises:
      ConfigError: if the text is empty or an item is not a positive integer.
    """
    items = str(text).strip().split("-")
    values = []
    for item in items:
        item = item.strip()
        if not item.isdigit() or int(item) <= 0:
            raise ConfigError(
                f"`{flag}`={text!r}: expected positive integers separated by '-', "
                f"e.g. '4-3-2'; {item!r} is not a positive integer"
            )
        values.append(int(item))
    return tuple(values)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The DLRM architecture.

    Attributes:
      embedding_dim: width ``d`` of every embedding row (``arch_sparse_feature_size``).
      table_sizes: rows of each embedding table, one per sparse feature.
      bottom_mlp: widths of the bottom MLP including its input width, e.g. ``(13, 512, 16)``.
      top_mlp: widths of the top MLP's layers *without* its input width, e.g.
        ``(512, 256, 1)``; the input width is the interaction's output width.
      interaction: ``"dot"`` or ``"cat"``.
      interaction_itself: keep the diagonal of the dot interaction too.
      loss_threshold: if in (0, 1), probabilities are clamped to ``[t, 1 - t]``.
    """

    embedding_dim: int
    table_sizes: tuple[int, ...]
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    interaction: str = "dot"
    interaction_itself: bool = False
    loss_threshold: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "table_sizes", tuple(int(n) for n in self.table_sizes))
        object.__setattr__(self, "bottom_mlp", tuple(int(n) for n in self.bottom_mlp))
        object.__setattr__(self, "top_mlp", tuple(int(n) for n in self.top_mlp))
        self.validate()

    @property
    def num_dense(self) -> int:
        """Width of the dense input (the bottom MLP's input width)."""
        return self.bottom_mlp[0]

    @property
    def num_tables(self) -> int:
        """Number of sparse features (embedding tables)."""
        return len(self.table_sizes)

    @property
    def interaction_width(self) -> int:
        """Width of the interaction output, the top MLP's input width."""
        if self.interaction == "cat":
            return self.bottom_mlp[-1] + self.num_tables * self.embedding_dim
        return self.bottom_mlp[-1] + dot_pairs(self.num_tables + 1, self.interaction_itself)

    def validate(self) -> None:
        """Checks the architecture; raises ConfigError naming the field at fault."""
        if self.embedding_dim <= 0:
            raise ConfigError(f"`embedding_dim`={self.embedding_dim}: must be a positive integer")
        if not self.table_sizes:
            raise ConfigError("`table_sizes`: at least one embedding table is needed")
        if any(n <= 0 for n in self.table_sizes):
            raise ConfigError(
                f"`table_sizes`: every table needs at least one row, got {self.table_sizes}"
            )
        if len(self.bottom_mlp) < 2:
            raise ConfigError(
                f"`bottom_mlp`={_dash(self.bottom_mlp)}: needs the input width and at least "
                "one layer, e.g. '13-512-256-64-16'"
            )
        if not self.top_mlp:
            raise ConfigError("`top_mlp`: needs at least one layer, e.g. '512-256-1'")
        if self.top_mlp[-1] != 1:
            raise ConfigError(
                f"`top_mlp`={_dash(self.top_mlp)}: the last layer must have width 1 "
                "(the click probability)"
            )
        if self.interaction not in INTERACTIONS:
            raise ConfigError(f"`interaction`={self.interaction!r}: must be one of {INTERACTIONS}")
        if self.interaction == "dot" and self.bottom_mlp[-1] != self.embedding_dim:
            raise ConfigError(
                f"`bottom_mlp`={_dash(self.bottom_mlp)}: its last width "
                f"({self.bottom_mlp[-1]}) must equal `embedding_dim` "
                f"({self.embedding_dim}), since the bottom MLP's output is interacted "
                "with the embedding vectors by dot products"
            )
        if not 0.0 <= self.loss_threshold < 0.5:
            raise ConfigError(
                f"`loss_threshold`={self.loss_threshold}: must be in [0, 0.5) "
                "(0 disables the clamp)"
            )

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (the inverse of ``from_dict``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """Builds a config from ``to_dict``'s output."""
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    """The devices and the ``tf.distribute`` strategy of a run.

    Attributes:
      distribution_strategy: ``auto``, ``one_device``, ``mirrored`` or
        ``multi_worker_mirrored``.
      use_gpu: train on GPU(s).
      num_gpus: GPUs to use with ``use_gpu`` (0 = all).
      num_cpu_replicas: split the CPU into this many logical devices (0 = no split).
    """

    distribution_strategy: str = "auto"
    use_gpu: bool = False
    num_gpus: int = 0
    num_cpu_replicas: int = 0


@dataclasses.dataclass(frozen=True)
class ArtifactsConfig:
    """What a run writes besides the trainer's own files.

    Attributes:
      plot_compute_graph: draw the model's graph into ``compute_graph.png`` (or
        a TensorBoard graph) in the run directory.
      save_onnx: also export the trained model to this ``.onnx`` file ("" = no).
      export_dir: export a SavedModel for TF Serving here ("" = no).
    """

    plot_compute_graph: bool = False
    save_onnx: str = ""
    export_dir: str = ""


def _dash(values: Sequence[int]) -> str:
    return "-".join(str(v) for v in values)
