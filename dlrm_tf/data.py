"""Training and test data for the trainer: generated (random, trace-driven) or converted files.

``DataSource`` hides where examples come from and hands the trainer datasets of
``({"dense_features", "sparse_features"}, labels)`` ready for ``model.fit``
under any ``tf.distribute`` strategy:

- converted TFRecords are read as one seeded stream of global batches
  (``mini_batch_size`` rows; the last partial global batch of an epoch is
  dropped under every strategy, so every replica count trains the same
  batches); with several replicas every input pipeline (one per worker) reads
  that same stream and keeps its slice of each global batch, split into
  per-replica batches (``strategy.distribute_datasets_from_function``). So an
  epoch trains each of its ``steps * mini_batch_size`` rows exactly once on 1
  device, N mirrored replicas or N workers, and a resumed run skips exactly the
  global batches already trained. The price: every worker reads the whole
  training split;
- generated data is made as global batches and split across replicas with
  ``strategy.experimental_distribute_dataset``, so a mirrored run sees exactly
  the batches a single-device run sees.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from dlrm_tf.strategy import is_multi_worker

GENERATIONS = ("random", "dataset", "synthetic")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how many there are."""

    generation: str = "random"
    processed_data_dir: str = ""
    data_size: int = 1
    num_batches: int = 0
    test_num_batches: int = 0
    num_indices_per_lookup: int = 10
    num_indices_per_lookup_fixed: bool = False
    round_targets: bool = False
    trace_file: str = ""
    trace_padding: bool = False
    seed: int = 123


class DataSource:
    """Builds the train and test datasets of one run."""

    def __init__(self, config: DataConfig, table_sizes: tuple[int, ...], num_dense: int) -> None:
        self.config = config
        self.metadata: dict | None = None
        if config.generation == "dataset":
            from input_pipeline import dataset as files

            self.metadata = files.read_metadata(config.processed_data_dir)
            table_sizes = tuple(int(n) for n in self.metadata["table_sizes"])
            num_dense = int(self.metadata.get("num_dense", num_dense))
        elif config.generation not in GENERATIONS:
            raise ValueError(f"`generation`={config.generation!r}: one of {GENERATIONS}")
        self.table_sizes = tuple(table_sizes)
        self.num_dense = int(num_dense)

    @property
    def from_files(self) -> bool:
        return self.config.generation == "dataset"

    def _split_rows(self, split: str) -> int:
        assert self.metadata is not None
        return int(self.metadata["rows"].get(split, 0))

    def has_split(self, split: str) -> bool:
        """Whether the converted data has examples in ``split``."""
        return self._split_rows(split) > 0 if self.from_files else True

    def steps_per_epoch(self, global_batch: int) -> int:
        """Training steps in one epoch (``--num_batches`` caps it).

        Converted data: full global batches only (the last partial one is dropped).
        Generated data: ``ceil(data_size / batch)``, the reference's batches.
        """
        if self.from_files:
            steps = self._split_rows("train") // global_batch
        else:
            steps = math.ceil(self.config.data_size / global_batch)
        if self.config.num_batches > 0:
            steps = (
                self.config.num_batches
                if not self.from_files
                else min(steps, self.config.num_batches)
            )
        if steps <= 0:
            raise ValueError(
                f"no training steps: {self._describe()} gives fewer examples than one "
                f"batch of `mini_batch_size`={global_batch}"
            )
        return steps

    def examples_per_epoch(self, global_batch: int, steps: int) -> int:
        """Training examples in an epoch of ``steps`` batches (the last may be partial)."""
        if self.from_files or self.config.num_batches > 0:
            return steps * global_batch
        return min(steps * global_batch, self.config.data_size)

    def test_steps(self, global_batch: int, train_steps: int) -> int | None:
        """Batches in one evaluation; None reads the whole test split."""
        if self.from_files:
            return self.config.test_num_batches or None
        return self.config.test_num_batches or train_steps

    def _describe(self) -> str:
        if self.from_files:
            return f"`processed_data_dir`={self.config.processed_data_dir}"
        return f"`data_size`={self.config.data_size}"

    def _generated(self, batch: int, num_batches: int, seed: int) -> tf.data.Dataset:
        """``num_batches`` full batches, or with 0 ``ceil(data_size / batch)``, the last partial."""
        cfg = self.config
        common = dict(
            table_sizes=self.table_sizes,
            num_dense=self.num_dense,
            batch_size=batch,
            num_batches=num_batches,
            data_size=cfg.data_size if num_batches <= 0 else None,
            num_indices_per_lookup=cfg.num_indices_per_lookup,
            num_indices_per_lookup_fixed=cfg.num_indices_per_lookup_fixed,
            round_targets=cfg.round_targets,
            seed=seed,
        )
        if cfg.generation == "synthetic":
            from input_pipeline.trace import synthetic_dataset

            return synthetic_dataset(
                trace_file_pattern=cfg.trace_file, enable_padding=cfg.trace_padding, **common
            )
        from input_pipeline.random_data import random_dataset

        # One RandomState stream in the reference's draw order: the reference's batches.
        return random_dataset(reference_stream=True, **common)

    def train_dataset(
        self,
        strategy: tf.distribute.Strategy,
        global_batch: int,
        steps: int,
        epoch: int = 0,
        skip: int = 0,
    ):
        """The batches of one epoch, from step ``skip`` on, distributed for ``strategy``."""
        cfg = self.config
        if self.from_files:
            from input_pipeline import dataset as files

            def dataset_fn(ctx: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
                # The same seeded stream of full global batches in every process.
                ds = files.make_dataset(
                    cfg.processed_data_dir,
                    "train",
                    global_batch,
                    shuffle=True,
                    seed=cfg.seed + epoch,
                    drop_remainder=True,
                )
                ds = ds.skip(skip).take(steps - skip)
                return ds if ctx is None else _pipeline_share(ds, ctx, global_batch)

            return _distribute_fn(strategy, dataset_fn)
        # Generated data: every epoch sees the same batches, like the reference's (without
        # --num_batches the last one holds the rest of --data_size, as the reference's).
        ds = self._generated(global_batch, steps if cfg.num_batches > 0 else 0, cfg.seed)
        ds = ds.skip(skip)
        return _distribute(strategy, ds)

    def test_dataset(self, strategy: tf.distribute.Strategy, global_batch: int, steps: int | None):
        """The test split (converted data) or held-out generated batches.

        Under multi-worker training every worker gets the whole test data,
        undistributed (see ``dlrm_tf.evaluation.Evaluator``).
        """
        cfg = self.config
        local = is_multi_worker(strategy)
        if self.from_files:
            from input_pipeline import dataset as files

            def dataset_fn(ctx: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
                ds = files.make_dataset(
                    cfg.processed_data_dir, "test", global_batch, shuffle=False, input_context=ctx
                )
                return ds.take(steps) if steps else ds

            return dataset_fn(None) if local else _distribute_fn(strategy, dataset_fn)
        ds = self._generated(global_batch, steps or 1, cfg.seed + 1)
        return ds if local else _distribute(strategy, ds)

    def sample_batches(self, global_batch: int, count: int) -> list:
        """The first ``count`` training batches as NumPy (for --debug_mode)."""
        strategy = tf.distribute.get_strategy()
        ds = self.train_dataset(strategy, global_batch, count)
        return list(ds.take(count).as_numpy_iterator())


def _pipeline_share(
    ds: tf.data.Dataset, ctx: tf.distribute.InputContext, global_batch: int
) -> tf.data.Dataset:
    """This input pipeline's slice of each global batch, as per-replica batches.

    Pipeline ``i`` of ``n`` keeps rows ``[i * B / n, (i + 1) * B / n)`` of every
    global batch and yields them in batches of ``B / replicas`` for its local
    replicas, which take consecutive elements.
    """
    share = global_batch // ctx.num_input_pipelines
    start = ctx.input_pipeline_id * share

    def keep(features: dict, labels: tf.Tensor):
        return {k: v[start : start + share] for k, v in features.items()}, labels[
            start : start + share
        ]

    per_replica = ctx.get_per_replica_batch_size(global_batch)
    return ds.map(keep).rebatch(per_replica, drop_remainder=True)


def _distribute(strategy: tf.distribute.Strategy, ds: tf.data.Dataset):
    if strategy.num_replicas_in_sync == 1:
        return ds
    return strategy.experimental_distribute_dataset(ds)


def _distribute_fn(strategy: tf.distribute.Strategy, dataset_fn):
    if strategy.num_replicas_in_sync == 1:
        return dataset_fn(None)
    return strategy.distribute_datasets_from_function(dataset_fn)
