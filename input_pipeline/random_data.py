"""Random DLRM input, as the reference's ``--data_generation=random`` makes it.

Per mini-batch of ``n`` examples the reference draws, from one uniform stream:

1. ``dense = rand(n, num_dense)`` as float32, values in ``[0, 1)``;
2. for every table of ``size`` rows, for every example in turn: the bag size
   ``k`` (``num_indices_per_lookup`` if ``num_indices_per_lookup_fixed``, else
   ``max(1, round(r * min(size, num_indices_per_lookup)))`` with one draw ``r``),
   then ``k`` draws ``u``; the bag is ``unique(round(u * (size - 1)))``, so it is
   sorted, de-duplicated and may be shorter than ``k``;
3. ``targets = rand(n, 1)`` as float32 in ``[0, 1)`` (not binary; rounded to 0/1
   only with ``round_targets``).

:func:`random_batch` makes a whole batch with numpy array operations, no loop
over examples. The generator type picks the draw layout:

* ``np.random.RandomState`` (the reference's legacy generator): the stream is
  consumed in exactly the reference's order and amount, so
  ``random_batch(np.random.RandomState(seed), ...)`` called batch after batch
  gives the reference's batches bit for bit (its ``RandomDataset`` reseeds with
  ``numpy_rand_seed`` at the start of each epoch; :func:`random_dataset` offers
  this as ``reference_stream=True``). With variable bag sizes the position of
  each example's draws depends on all earlier bag sizes; the positions are
  found by pointer doubling over one block of draws (``O(n log n)`` array work),
  then the stream is rewound and advanced by exactly the draws used.
* ``np.random.Generator``: the same distributions in a blocked layout, cheaper:
  per table ``n`` bag-size draws, then an ``[n, min(size, H)]`` block of id
  draws of which each example uses the first ``k`` (fixed-size bags: an
  ``[n, H]`` block, as the reference). :func:`random_dataset`'s default uses one
  generator per batch, ``np.random.default_rng([seed, 0, batch_index])``, so
  batches are independent and generated in parallel by tf.data.

Bags are returned padded: ``int64 [n, T, H]`` with ``H = num_indices_per_lookup``,
each bag's ids ascending, then ``-1`` up to ``H``.

Data set length (as the reference): with ``num_batches > 0`` there are
``num_batches`` full batches of ``batch_size`` (``data_size`` is ignored);
otherwise ``ceil(data_size / batch_size)`` batches, the last one holding the
remainder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from input_pipeline.features import DENSE_KEY, SPARSE_KEY

if TYPE_CHECKING:
    import tensorflow as tf

RandomStream = np.random.Generator | np.random.RandomState

# Data sets whose tensors fit in this many bytes are generated once, when the
# data set is built, and then served from memory; larger ones are generated
# batch by batch on every pass. Both give the same content.
PRECOMPUTE_MAX_BYTES = 32 << 20

_SENTINEL = np.iinfo(np.int64).max


def batch_sizes(batch_size: int, num_batches: int, data_size: int | None) -> list[int]:
    """Sizes of the batches of a generated data set, following the reference.

    Args:
      batch_size: examples per batch (``mini_batch_size``).
      num_batches: if > 0, the number of full batches; ``data_size`` is ignored.
      data_size: examples in the data set, used when ``num_batches`` is 0.

    Returns:
      One size per batch; only the last may be smaller than ``batch_size``.

    Raises:
      ValueError: on a non-positive ``batch_size``, a negative ``num_batches`` or
        ``num_batches == 0`` without a positive ``data_size``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_batches < 0:
        raise ValueError(f"num_batches must be >= 0, got {num_batches}")
    if num_batches > 0:
        return [batch_size] * num_batches
    if data_size is None or data_size <= 0:
        raise ValueError(
            "give num_batches > 0, or num_batches = 0 and a positive data_size; "
            f"got num_batches={num_batches}, data_size={data_size}"
        )
    full, rest = divmod(data_size, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def bag_sizes(r: np.ndarray, size: int, num_indices_per_lookup: int) -> np.ndarray:
    """Bag sizes ``max(1, round(r * min(size, num_indices_per_lookup)))`` for draws ``r``.

    ``np.round`` rounds halves to even, as the reference does.
    """
    m = min(size, num_indices_per_lookup)
    return np.maximum(1, np.round(r * m)).astype(np.int64)


def pack_bags(flat_ids: np.ndarray, sizes: np.ndarray, width: int) -> np.ndarray:
    """Places consecutive bags into a padded matrix, de-duplicated and sorted.

    Args:
      flat_ids: int64, the ids of all bags one after another.
      sizes: int64 ``[n]``, the length of each bag in ``flat_ids`` (<= width).
      width: columns of the result.

    Returns:
      int64 ``[n, width]``: row ``i`` holds the distinct ids of bag ``i`` in
      ascending order, then ``-1``.
    """
    n = sizes.shape[0]
    valid = np.arange(width)[None, :] < sizes[:, None]
    bags = np.full((n, width), _SENTINEL, dtype=np.int64)
    bags[valid] = flat_ids  # row-major order = bag order
    return _dedup_rows(bags)


def _dedup_rows(bags: np.ndarray) -> np.ndarray:
    """Sorts each row, drops repeated ids and turns the padding sentinel into -1."""
    bags.sort(axis=1)
    if bags.shape[1] > 1:
        dup = bags[:, 1:] == bags[:, :-1]
        dup &= bags[:, 1:] != _SENTINEL
        if dup.any():
            bags[:, 1:][dup] = _SENTINEL
            bags.sort(axis=1)
    bags[bags == _SENTINEL] = -1
    return bags


def chain_starts(first_sizes: np.ndarray, n: int) -> np.ndarray:
    """Start positions of ``n`` consecutive records in a flat stream.

    A record starting at position ``p`` occupies ``1 + first_sizes[p]`` positions
    (its size draw, then its payload), so the next record starts at
    ``p + 1 + first_sizes[p]``. The first record starts at 0. Computed with pointer
    doubling: ``start_i = next^i(0)``, applying ``next^(2^b)`` for every set bit
    ``b`` of ``i`` (powers of one function commute, so the order is free).

    Args:
      first_sizes: int64 ``[M]``, the payload size a record would have if it
        started at each position.
      n: number of records; the stream must be long enough for all of them.

    Returns:
      int64 ``[n]`` start positions.
    """
    m = first_sizes.shape[0]
    jump = np.empty(m + 1, dtype=np.int64)
    np.minimum(np.arange(1, m + 1) + first_sizes, m, out=jump[:m])
    jump[m] = m  # past the end maps to itself
    starts = np.zeros(n, dtype=np.int64)
    steps = np.arange(n)
    bit = 0
    while (1 << bit) < n:
        sel = ((steps >> bit) & 1).astype(bool)
        starts[sel] = jump[starts[sel]]
        bit += 1
        if (1 << bit) < n:
            jump = jump[jump]
    return starts


def _reference_layout_bags(rng: np.random.RandomState, size: int, n: int, h: int) -> np.ndarray:
    """Variable-size bags drawn in the reference's order: ``r_1, u_1.., r_2, u_2.., ...``."""
    m = min(size, h)
    state = rng.get_state()
    block = rng.random_sample(n * (1 + m))  # enough for n records of at most 1 + m draws
    sizes_at = bag_sizes(block, size, h)
    starts = chain_starts(sizes_at, n)
    sizes = sizes_at[starts]
    used = int(starts[-1] + 1 + sizes[-1])
    rng.set_state(state)
    rng.random_sample(used)  # advance the stream by exactly what the batch used
    cols = np.arange(m)[None, :]
    positions = np.minimum(starts[:, None] + 1 + cols, block.shape[0] - 1)
    bags = np.round(block[positions] * (size - 1)).astype(np.int64)
    bags[cols >= sizes[:, None]] = _SENTINEL
    return bags


def _blocked_layout_bags(rng: np.random.Generator, size: int, n: int, h: int) -> np.ndarray:
    """Variable-size bags from ``n`` size draws, then an ``[n, min(size, h)]`` block."""
    m = min(size, h)
    sizes = bag_sizes(rng.random(n), size, h)
    bags = np.round(rng.random((n, m)) * (size - 1)).astype(np.int64)
    bags[np.arange(m)[None, :] >= sizes[:, None]] = _SENTINEL
    return bags


def _uniform_bags(rng: RandomStream, size: int, n: int, h: int, fixed: bool) -> np.ndarray:
    """One table's bags for ``n`` examples, ``[n, h]`` padded with -1."""
    if fixed:
        bags = np.round(rng.random((n, h)) * (size - 1)).astype(np.int64)
    elif isinstance(rng, np.random.RandomState):
        bags = _reference_layout_bags(rng, size, n, h)
    else:
        bags = _blocked_layout_bags(rng, size, n, h)
    bags = _dedup_rows(bags)
    if bags.shape[1] < h:
        bags = np.concatenate([bags, np.full((n, h - bags.shape[1]), -1, np.int64)], axis=1)
    return bags


def random_batch(
    rng: RandomStream,
    table_sizes: Sequence[int],
    num_dense: int,
    n: int,
    num_indices_per_lookup: int,
    fixed: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch of the reference's random data (see the module docstring).

    Args:
      rng: the uniform stream: ``np.random.RandomState`` (the reference's draw
        order; bit-exact batches) or ``np.random.Generator`` (blocked layout).
      table_sizes: rows of each embedding table.
      num_dense: dense features per example.
      n: examples in the batch.
      num_indices_per_lookup: ``H``, the largest bag size and the padded width.
      fixed: every bag draws exactly ``H`` ids (``num_indices_per_lookup_fixed``).

    Returns:
      ``(dense float32 [n, num_dense], ids int64 [n, T, H] padded with -1,
      targets float32 [n, 1])``; targets are not rounded.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if num_indices_per_lookup <= 0:
        raise ValueError(f"num_indices_per_lookup must be positive, got {num_indices_per_lookup}")
    if any(int(s) <= 0 for s in table_sizes):
        raise ValueError(f"table sizes must be positive, got {list(table_sizes)}")
    dense = rng.random((n, num_dense)).astype(np.float32)
    ids = np.empty((n, len(table_sizes), num_indices_per_lookup), dtype=np.int64)
    for t, size in enumerate(table_sizes):
        ids[:, t, :] = _uniform_bags(rng, int(size), n, num_indices_per_lookup, fixed)
    targets = rng.random((n, 1)).astype(np.float32)
    return dense, ids, targets


def batch_rng(seed: int, batch_index: int) -> np.random.Generator:
    """The generator of batch ``batch_index`` in per-batch mode."""
    return np.random.default_rng([seed, 0, batch_index])


def _bytes_per_row(num_dense: int, num_tables: int, width: int) -> int:
    return 4 * num_dense + 8 * num_tables * width + 4


def _structure(dense: Any, ids: Any, targets: Any) -> tuple[dict[str, Any], Any]:
    return {DENSE_KEY: dense, SPARSE_KEY: ids}, targets


def _signature(num_dense: int, num_tables: int, width: int, multi_hot: bool) -> Any:
    import tensorflow as tf

    sparse_shape = (None, num_tables, width) if multi_hot else (None, num_tables)
    return _structure(
        tf.TensorSpec((None, num_dense), tf.float32),
        tf.TensorSpec(sparse_shape, tf.int64),
        tf.TensorSpec((None, 1), tf.float32),
    )


def finish_batch(
    batch: tuple[np.ndarray, np.ndarray, np.ndarray], round_targets: bool, multi_hot: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rounds the targets if asked and drops the bag axis for one-hot output."""
    dense, ids, targets = batch
    if round_targets:
        targets = np.round(targets)
    if not multi_hot:
        ids = ids[:, :, 0]
    return dense, ids, targets


def dataset_from_batches(
    sizes: Sequence[int],
    batch_iterator: Callable[[], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    make_batch: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    *,
    num_dense: int,
    num_tables: int,
    width: int,
    multi_hot: bool,
) -> tf.data.Dataset:
    """Wraps a batch generator into a re-iterable, deterministic ``tf.data.Dataset``.

    Small data sets (at most :data:`PRECOMPUTE_MAX_BYTES`) are generated once and
    sliced from memory on every pass. Larger ones are generated on every pass:
    if ``make_batch`` is given, it is mapped over batch indices in parallel;
    otherwise ``batch_iterator()`` is iterated from the start on each pass (for
    sequential generators).

    Args:
      sizes: batch sizes, from :func:`batch_sizes`.
      batch_iterator: fresh iterator over all finished ``(dense, ids, targets)``
        batches, in order.
      make_batch: batch index -> the same finished batch, depending on the index
        only (so batches can be made in any order and at once), or ``None``.
      num_dense, num_tables, width, multi_hot: the shapes, for the signature.

    Returns:
      A data set of ``({"dense_features", "sparse_features"}, labels)``.
    """
    import tensorflow as tf

    signature = _signature(num_dense, num_tables, width, multi_hot)
    rows = int(sum(sizes))
    if rows * _bytes_per_row(num_dense, num_tables, width) <= PRECOMPUTE_MAX_BYTES:
        parts = list(batch_iterator())
        dense, ids, targets = (tf.constant(np.concatenate([p[i] for p in parts])) for i in range(3))
        ends = np.cumsum(sizes)
        starts = tf.constant(ends - np.asarray(sizes), tf.int64)
        ends = tf.constant(ends, tf.int64)

        def take(i: tf.Tensor) -> Any:
            lo, hi = starts[i], ends[i]
            return _structure(dense[lo:hi], ids[lo:hi], targets[lo:hi])

        return tf.data.Dataset.range(len(sizes)).map(take)

    if make_batch is not None:
        sparse_shape = signature[0][SPARSE_KEY].shape

        def generate(i: tf.Tensor) -> Any:
            dense, ids, targets = tf.numpy_function(
                lambda j: make_batch(int(j)),
                [i],
                (tf.float32, tf.int64, tf.float32),
                stateful=False,
            )
            dense.set_shape((None, num_dense))
            ids.set_shape(sparse_shape)
            targets.set_shape((None, 1))
            return _structure(dense, ids, targets)

        return tf.data.Dataset.range(len(sizes)).map(
            generate, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )

    def structured() -> Iterator[Any]:
        for dense, ids, targets in batch_iterator():
            yield _structure(dense, ids, targets)

    return tf.data.Dataset.from_generator(structured, output_signature=signature)


def check_generator_args(
    table_sizes: Sequence[int], num_indices_per_lookup: int, seed: int, multi_hot: bool
) -> list[int]:
    """Validates the arguments shared by the generators; returns the table sizes as ints."""
    table_sizes = [int(s) for s in table_sizes]
    if not table_sizes or any(s <= 0 for s in table_sizes):
        raise ValueError(f"table sizes must be positive, got {table_sizes}")
    if num_indices_per_lookup <= 0:
        raise ValueError(f"num_indices_per_lookup must be positive, got {num_indices_per_lookup}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not multi_hot and num_indices_per_lookup != 1:
        raise ValueError(
            "multi_hot=False gives one id per bag and needs num_indices_per_lookup=1, "
            f"got {num_indices_per_lookup}"
        )
    return table_sizes


def random_dataset(
    *,
    table_sizes: Sequence[int],
    num_dense: int,
    batch_size: int,
    num_batches: int,
    data_size: int | None = None,
    num_indices_per_lookup: int = 10,
    num_indices_per_lookup_fixed: bool = False,
    round_targets: bool = False,
    seed: int = 123,
    multi_hot: bool = True,
    reference_stream: bool = False,
) -> tf.data.Dataset:
    """The reference's random data as a ``tf.data.Dataset`` (see the module docstring).

    Args:
      table_sizes: rows of each embedding table (``arch_embedding_size``).
      num_dense: dense features per example.
      batch_size: examples per batch (``mini_batch_size``).
      num_batches: if > 0, that many full batches; if 0, ``data_size`` decides.
      data_size: examples in the data set when ``num_batches`` is 0.
      num_indices_per_lookup: largest bag size ``H``; the padded bag width.
      num_indices_per_lookup_fixed: every bag draws exactly ``H`` ids.
      round_targets: round the labels to 0/1.
      seed: ``numpy_rand_seed``; the same seed gives the same data, every pass.
      multi_hot: if False, ``sparse_features`` is ``[B, T]`` (one id per bag);
        this needs ``num_indices_per_lookup == 1``.
      reference_stream: draw all batches in order from one legacy
        ``np.random.RandomState(seed)``, restarted each pass, which reproduces the
        reference's batches exactly; generated sequentially. By default every
        batch has its own generator (:func:`batch_rng`) and batches are generated
        in parallel.

    Returns:
      A data set of ``({"dense_features": float32 [B, num_dense],
      "sparse_features": int64 [B, T, H]}, labels float32 [B, 1])``, bags padded
      with -1.
    """
    table_sizes = check_generator_args(table_sizes, num_indices_per_lookup, seed, multi_hot)
    sizes = batch_sizes(batch_size, num_batches, data_size)
    args = (table_sizes, num_dense)
    tail = (num_indices_per_lookup, num_indices_per_lookup_fixed)

    def make_batch(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch = random_batch(batch_rng(seed, i), *args, sizes[i], *tail)
        return finish_batch(batch, round_targets, multi_hot)

    def batch_iterator() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if reference_stream:
            rng = np.random.RandomState(seed)
            for n in sizes:
                yield finish_batch(random_batch(rng, *args, n, *tail), round_targets, multi_hot)
        else:
            for i in range(len(sizes)):
                yield make_batch(i)

    return dataset_from_batches(
        sizes,
        batch_iterator,
        None if reference_stream else make_batch,
        num_dense=num_dense,
        num_tables=len(table_sizes),
        width=num_indices_per_lookup,
        multi_hot=multi_hot,
    )
