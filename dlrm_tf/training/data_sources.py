"""Training and test data for the trainer: generated (random, trace-driven) or converted files.

``DataSource`` hides where examples come from and hands the trainer datasets of
``({"dense_features", "sparse_features"}, labels)`` ready for ``model.fit``
under any ``tf.distribute`` strategy. It is one of two sources, each owning its
batch sizes:

- ``ConvertedSource``: converted TFRecords are read as one seeded stream of global batches
  (``mini_batch_size`` rows; the last partial global batch of an epoch is
  dropped under every strategy, so every replica count trains the same
  batches); with several replicas every input pipeline (one per worker) reads
  that same stream and keeps its slice of each global batch, split into
  per-replica batches (``strategy.distribute_datasets_from_function``). So an
  epoch trains each of its ``steps * mini_batch_size`` rows exactly once on 1
  device, N mirrored replicas or N workers, and a resumed run skips exactly the
  global batches already trained. The price: every worker reads the whole
  training split;
- ``GeneratedSource``: generated data is made as global batches and split across replicas with
  ``strategy.experimental_distribute_dataset``, so a mirrored run sees exactly
  the batches a single-device run sees.
"""

from __future__ import annotations

import copy
import dataclasses

import tensorflow as tf

from dlrm_tf.training.strategy import is_multi_worker

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
    """The train and test datasets of one run, in batches the source owns.

    ``DataSource(config, table_sizes, num_dense)`` gives a ``ConvertedSource``
    for ``generation="dataset"`` and a ``GeneratedSource`` otherwise; both
    answer the same questions (steps per epoch, examples, test batches) and
    build the same kind of datasets. The batch sizes are set once, at
    construction or with ``with_batches``; no method takes a batch size.
    """

    from_files = False  # whether the examples come from converted files

    def __new__(cls, config: DataConfig | None = None, *args, **kwargs):
        if cls is DataSource:  # the constructor picks the source for the config
            assert config is not None
            cls = ConvertedSource if config.generation == "dataset" else GeneratedSource
        return super().__new__(cls)

    def __init__(
        self,
        config: DataConfig,
        table_sizes: tuple[int, ...],
        num_dense: int,
        global_batch: int = 1,
        test_batch: int = 0,
    ) -> None:
        """``table_sizes`` and ``num_dense`` apply to generated data (converted data
        has its own); ``test_batch`` 0 evaluates in batches of ``global_batch``."""
        self.config = config
        self.metadata: dict | None = None
        self.table_sizes = tuple(int(n) for n in table_sizes)
        self.num_dense = int(num_dense)
        self.global_batch = 1
        self.test_batch = 1
        self._set_batches(global_batch, test_batch)

    def _set_batches(self, global_batch: int, test_batch: int) -> None:
        if global_batch <= 0:
            raise ValueError(f"`mini_batch_size`={global_batch}: must be positive")
        self.global_batch = int(global_batch)
        self.test_batch = int(test_batch) if test_batch > 0 else self.global_batch

    def with_batches(self, global_batch: int, test_batch: int = 0) -> DataSource:
        """This source in global batches of ``global_batch`` rows (``test_batch`` rows
        for evaluation; 0: the same)."""
        source = copy.copy(self)
        source._set_batches(global_batch, test_batch)
        return source

    def describe(self) -> str:
        """The data in a few words, e.g. ``random data``."""
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        """Whether the data has examples in ``split``."""
        raise NotImplementedError

    def has_test(self, test_freq: int) -> bool:
        """Whether the run evaluates on test data, given ``--test_freq``."""
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        """Training steps in one epoch (``--num_batches`` caps it)."""
        raise NotImplementedError

    def examples_per_epoch(self) -> int:
        """Training examples in one epoch (the last batch may be partial)."""
        raise NotImplementedError

    def test_steps(self) -> int | None:
        """Batches in one evaluation; None reads the whole test split."""
        raise NotImplementedError

    def train_dataset(self, strategy: tf.distribute.Strategy, epoch: int = 0, skip: int = 0):
        """The batches of one epoch, from step ``skip`` on, distributed for ``strategy``."""
        raise NotImplementedError

    def test_dataset(self, strategy: tf.distribute.Strategy):
        """The test batches, distributed for ``strategy``.

        Under multi-worker training every worker gets the whole test data,
        undistributed (see ``dlrm_tf.training.evaluation.Evaluator``).
        """
        raise NotImplementedError

    def sample_batches(self, global_batch: int, count: int) -> list:
        """The first ``count`` training batches of ``global_batch`` rows as NumPy
        (for --debug_mode and the ONNX export's example input)."""
        source = self.with_batches(global_batch)
        ds = source.train_dataset(tf.distribute.get_strategy())
        return list(ds.take(count).as_numpy_iterator())

    def _no_steps_error(self, what: str) -> ValueError:
        return ValueError(
            f"no training steps: {what} gives fewer examples than one batch of "
            f"`mini_batch_size`={self.global_batch}"
        )


class GeneratedSource(DataSource):
    """Random or trace-driven examples made on the fly, the reference's batches.

    An epoch is ``ceil(data_size / batch)`` batches (the last one partial), or
    exactly ``--num_batches`` full ones; every epoch sees the same batches, and
    the test data is held-out batches of another seed.
    """

    def __init__(self, config: DataConfig, *args, **kwargs) -> None:
        if config.generation not in GENERATIONS:
            raise ValueError(f"`generation`={config.generation!r}: one of {GENERATIONS}")
        super().__init__(config, *args, **kwargs)

    def describe(self) -> str:
        return f"{self.config.generation} data"

    def has_split(self, split: str) -> bool:
        return True

    def has_test(self, test_freq: int) -> bool:
        # Like the reference, generated data is tested only when --test_freq asks for it.
        return test_freq > 0

    def _batch_sizes(self) -> list[int]:
        """The epoch's batch sizes, by the generators' own rule (``random_data.batch_sizes``)."""
        from input_pipeline.random_data import batch_sizes

        cfg = self.config
        if cfg.num_batches <= 0 and cfg.data_size <= 0:
            raise self._no_steps_error(f"`data_size`={cfg.data_size}")
        return batch_sizes(self.global_batch, cfg.num_batches, cfg.data_size)

    def steps_per_epoch(self) -> int:
        return len(self._batch_sizes())

    def examples_per_epoch(self) -> int:
        return sum(self._batch_sizes())

    def test_steps(self) -> int:
        return self.config.test_num_batches or self.steps_per_epoch()

    def _generated(
        self, batch: int, num_batches: int, seed: int, data_size: int | None = None
    ) -> tf.data.Dataset:
        """``num_batches`` full batches, or (0) ``ceil(data_size / batch)`` ending partial."""
        cfg = self.config
        common = dict(
            table_sizes=self.table_sizes,
            num_dense=self.num_dense,
            batch_size=batch,
            num_batches=num_batches,
            data_size=data_size,
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

    def train_dataset(self, strategy: tf.distribute.Strategy, epoch: int = 0, skip: int = 0):
        cfg = self.config  # without num_batches: data_size rows, the last batch partial
        ds = self._generated(self.global_batch, cfg.num_batches, cfg.seed, cfg.data_size)
        return _distribute(strategy, ds.skip(skip))

    def test_dataset(self, strategy: tf.distribute.Strategy):
        ds = self._generated(self.test_batch, self.test_steps(), self.config.seed + 1)
        return ds if is_multi_worker(strategy) else _distribute(strategy, ds)


class ConvertedSource(DataSource):
    """TFRecord shards written by ``input_pipeline.convert``, read as one seeded
    stream of full global batches (the last partial batch of an epoch dropped)."""

    from_files = True

    def __init__(
        self,
        config: DataConfig,
        table_sizes: tuple[int, ...] = (),
        num_dense: int = 0,
        global_batch: int = 1,
        test_batch: int = 0,
    ) -> None:
        """The table sizes and dense width are the data's (from its metadata.json)."""
        from input_pipeline import metadata as metadata_file

        metadata = metadata_file.read(config.processed_data_dir)
        num_dense = int(metadata.get("num_dense", num_dense))
        table_sizes = tuple(metadata["table_sizes"])
        super().__init__(config, table_sizes, num_dense, global_batch, test_batch)
        self.metadata = metadata

    def _split_rows(self, split: str) -> int:
        return int(self.metadata["rows"].get(split, 0))

    def describe(self) -> str:
        return self.config.processed_data_dir

    def has_split(self, split: str) -> bool:
        return self._split_rows(split) > 0

    def has_test(self, test_freq: int) -> bool:
        return self.has_split("test")

    def steps_per_epoch(self) -> int:
        steps = self._split_rows("train") // self.global_batch
        if self.config.num_batches > 0:
            steps = min(steps, self.config.num_batches)
        if steps <= 0:
            raise self._no_steps_error(f"`processed_data_dir`={self.config.processed_data_dir}")
        return steps

    def examples_per_epoch(self) -> int:
        return self.steps_per_epoch() * self.global_batch

    def test_steps(self) -> int | None:
        return self.config.test_num_batches or None

    def train_dataset(self, strategy: tf.distribute.Strategy, epoch: int = 0, skip: int = 0):
        from input_pipeline import dataset as files

        batch, steps = self.global_batch, self.steps_per_epoch()
        data_dir, seed = self.config.processed_data_dir, self.config.seed + epoch

        def dataset_fn(ctx: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
            # The same seeded stream of full global batches in every process.
            ds = files.make_dataset(
                data_dir, "train", batch, shuffle=True, seed=seed, drop_remainder=True
            )
            ds = ds.skip(skip).take(steps - skip)
            return ds if ctx is None else _pipeline_share(ds, ctx, batch)

        return _distribute_fn(strategy, dataset_fn)

    def test_dataset(self, strategy: tf.distribute.Strategy):
        from input_pipeline import dataset as files

        batch, steps, data_dir = self.test_batch, self.test_steps(), self.config.processed_data_dir

        def dataset_fn(ctx: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
            ds = files.make_dataset(data_dir, "test", batch, shuffle=False, input_context=ctx)
            return ds.take(steps) if steps else ds

        if is_multi_worker(strategy):
            return dataset_fn(None)
        return _distribute_fn(strategy, dataset_fn)


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
