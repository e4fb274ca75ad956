"""Trace-driven synthetic DLRM input (the reference's ``--data_generation=synthetic``).

Embedding ids are generated so that their temporal locality follows a measured
access trace, summarised per table by a *distribution file*.

Distribution file
-----------------
Three lines of comma-separated numbers (the reference writes ``", "``; any
whitespace around the commas is accepted):

1. the distinct ids of the trace in order of first access ("unique accesses");
2. the distinct LRU stack distances seen, strictly increasing, starting with 0
   (0 = first access of an id; ``s > 0`` = the id that was the ``s``-th most
   recently used distinct id, 1 being the most recent one);
3. the cumulative probability of each distance of line 2 (non-decreasing, the
   last one 1).

:func:`load_distribution` rejects, naming the file and line: a number of lines
other than 3, a number that does not parse, repeated ids on line 1, distances
that are negative, not increasing, not starting with 0 or larger than the number
of ids on line 1 (no LRU stack can be that deep), a line 3 whose length differs
from line 2's, probabilities outside [0, 1], a decreasing CDF, a last value that
is not 1 (tolerance 1e-6; it is then set to exactly 1), and a zero probability of
distance 0 (the replay could never start).

Profiling (:func:`profile_trace`, ``python -m input_pipeline.trace profile``)
--------------------------------------------------------------------------------
The stack distance of every access is computed exactly (a Fenwick tree over
access times, ``O(N log N)``); line 2 lists the distinct distances, line 3 their
cumulative frequencies.

Generation (:class:`TraceGenerator`)
------------------------------------
The generator keeps an LRU stack of the ids produced so far (most recent on top)
and a pointer to the next unused id of line 1. Every access consumes exactly one
double ``u = rng.random()`` (drawn in blocks, in order) and:

* draws a distance by inverse CDF over the distances *reachable* now:
  ``{0} ∪ {s in line 2 : 1 <= s <= depth}``, ``depth`` = size of the stack.
  These form a prefix ``0..j`` of line 2, so the distance is the first index
  ``i <= j`` with ``cdf[i] > u * cdf[j]`` (the CDF renormalised to the prefix).
  Once ``depth`` reaches the largest distance, every distance is reachable.
* with ``enable_padding``, once every id of line 1 has been produced, distance 0
  is excluded: the distance is the first ``i >= 1`` with
  ``cdf[i] > cdf[0] + u * (1 - cdf[0])``. If the distribution has no
  positive-probability distance above 0 there is nothing to renormalise to and
  distance 0 stays allowed (see wrap-around).
* applies it: distance 0 produces the next unused id of line 1 and pushes it on
  top; distance ``s > 0`` produces the id ``s`` places from the top and moves
  it to the top.
* wrap-around: when distance 0 is drawn after all ids of line 1 have been used
  (always possible without padding), the id at the *bottom* of the stack (the
  least recently used one) is produced and moved to the top. The stack then
  stays as deep as line 1 is long and new-id draws cycle through the ids in LRU
  order. This is what the reference's generator does too (it keeps all ids in
  one rotating list).

Every applied distance is the true LRU distance of that access, so profiling a
generated stream gives back the drawn distances (a wrap-around shows as the
full depth). New ids are drawn at the constant rate P(0), so the warm-up (the
stack shallower than the largest distance, large distances under-represented)
lasts about ``max_distance / P(0)`` accesses: for a file profiled from a trace,
roughly that trace's length. After it, the distances follow the file.

The inverse CDF is vectorised over a whole call (a guide table plus
``np.searchsorted``); the replay is then one tight Python comprehension over a
list used as the stack (``list.pop(-s)`` and ``append`` are C memmoves of ``s``
pointers), with the operation of every access precomputed with numpy. Cost:
about 0.1 µs per access for stacks of a few thousand ids; ``pop(-s)`` grows
with ``s``, so very deep stacks (10^5 ids and more) are slower.

Synthetic data set (:func:`synthetic_dataset`)
----------------------------------------------
One generator per table; its stack persists across bags and batches (the whole
pass over the data set is one stream per table) and restarts with each pass, so
every pass gives the same data. Per batch ``b``, from
``np.random.default_rng([seed, 0, b])``: dense features ``[n, num_dense]``, then
per table the bag-size draws (as the random generator: ``H`` if fixed, else
``max(1, round(r * min(size, H)))``), then the targets ``[n, 1]``. Table ``t``'s
generator draws from ``np.random.default_rng([seed, 1, t])``. Each bag takes the
next ``k`` ids of its table's stream and is de-duplicated (sorted, padded with
-1 to ``H``). Ids outside ``[0, size)`` are reduced modulo ``size``, with one
logged warning per distribution file and table size.

File pattern: table ``i``'s file is the pattern with the *last* ``j`` of its
file name (not of its directories) replaced by ``i``: ``input/dist_emb_j.log``
gives ``input/dist_emb_0.log``, ``input/dist_emb_1.log``, ...; a ``j`` in a
directory name is left alone. A file name without ``j`` means every table uses
the same file.

Differences from the reference, on purpose: the reference restarts the LRU
replay at every bag (it re-reads the file for every example), so each of its
bags begins with the same first id; here the stream runs across bags. The
reference's padding excludes distance 0 once the number of new ids reaches the
largest distance; here once all ids of line 1 are used (the stated intent of
its padding: "disable generation of new references once all have been seen").

Command line::

    python -m input_pipeline.trace profile --trace=TRACE --output=DIST [--precision=6]
    python -m input_pipeline.trace generate --dist=DIST --num=N --seed=S --output=TRACE \
        [--enable_padding]
    python -m input_pipeline.trace zipf --num_ids=V --length=N --exponent=A --seed=S \
        --output=TRACE

A raw trace file holds ids separated by commas and/or whitespace, over any
number of lines. ``zipf`` writes a trace of independent Zipf-distributed ids (a
popularity-skewed workload) for making example distributions.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import logging
import os
import re
import sys
from array import array
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from input_pipeline import errors, random_data

if TYPE_CHECKING:
    import tensorflow as tf

_LOG = logging.getLogger(__name__)
_CDF_TOLERANCE = 1e-6
_GUIDE_BINS = 1 << 14  # a power of two, so v * _GUIDE_BINS is exact
_warned: set[tuple[str, int]] = set()


class DistributionError(ValueError):
    """A distribution file or object is malformed; the message says where."""


@dataclasses.dataclass(eq=False)
class TraceDistribution:
    """An access trace summarised by its LRU stack distances.

    Attributes:
      unique_ids: int64 ``[U]``, distinct ids in order of first access.
      distances: int64 ``[L]``, the distinct stack distances, increasing, from 0.
      cdf: float64 ``[L]``, cumulative probability of each distance; last = 1.
    """

    unique_ids: np.ndarray
    distances: np.ndarray
    cdf: np.ndarray
    _guide: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.unique_ids = np.asarray(self.unique_ids, dtype=np.int64).reshape(-1)
        self.distances = np.asarray(self.distances, dtype=np.int64).reshape(-1)
        self.cdf = np.asarray(self.cdf, dtype=np.float64).reshape(-1).copy()
        for line, message in _problems(self):
            raise DistributionError(f"line {line}: {message}")
        self.cdf[-1] = 1.0

    def guide_table(self) -> np.ndarray:
        """Guide table of the inverse CDF (built once per distribution).

        For ``v`` in ``[b / G, (b + 1) / G)``, ``searchsorted(cdf, v, "right")`` is
        ``table[b]`` if that is >= 0; -1 marks the bins with a CDF step inside,
        where a search decides.
        """
        if self._guide is None:
            edges = np.searchsorted(
                self.cdf, np.arange(_GUIDE_BINS + 1) / _GUIDE_BINS, side="right"
            )
            self._guide = np.where(edges[:-1] == edges[1:], edges[:-1], -1).astype(np.int32)
        return self._guide

    @property
    def probabilities(self) -> np.ndarray:
        """Probability of each distance in :attr:`distances`."""
        return np.diff(self.cdf, prepend=0.0)


def _problems(dist: TraceDistribution) -> Iterator[tuple[int, str]]:
    """Yields ``(line number, message)`` for what is wrong with a distribution."""
    ids, dists, cdf = dist.unique_ids, dist.distances, dist.cdf
    if ids.size == 0:
        yield 1, "no ids"
    elif np.unique(ids).size != ids.size:
        values, counts = np.unique(ids, return_counts=True)
        yield 1, f"id {values[counts > 1][0]} appears more than once"
    if dists.size == 0:
        yield 2, "no stack distances"
        return
    if dists[0] != 0:
        yield 2, f"the first stack distance must be 0 (new id), got {dists[0]}"
    if (dists < 0).any():
        yield 2, f"negative stack distance {dists[dists < 0][0]}"
    if dists.size > 1 and (np.diff(dists) <= 0).any():
        at = int(np.argmax(np.diff(dists) <= 0)) + 1
        yield 2, f"stack distances must increase; item {at} is {dists[at]} after {dists[at - 1]}"
    if dists[-1] > ids.size:
        yield (
            2,
            (
                f"largest stack distance {dists[-1]} exceeds the {ids.size} ids of line 1 "
                "(no LRU stack can be that deep)"
            ),
        )
    if cdf.size != dists.size:
        yield 3, f"{cdf.size} probabilities for {dists.size} stack distances (line 2)"
        return
    if not np.isfinite(cdf).all() or (cdf < 0).any() or (cdf > 1 + _CDF_TOLERANCE).any():
        yield 3, "cumulative probabilities must lie in [0, 1]"
    if cdf.size > 1 and (np.diff(cdf) < 0).any():
        at = int(np.argmax(np.diff(cdf) < 0)) + 1
        yield 3, f"the CDF decreases at item {at}: {cdf[at]!r} after {cdf[at - 1]!r}"
    if abs(cdf[-1] - 1.0) > _CDF_TOLERANCE:
        yield 3, f"the last cumulative probability must be 1, got {cdf[-1]!r}"
    if dists[0] == 0 and cdf[0] <= 0:
        yield 3, "distance 0 (new id) has probability 0, so no id could ever be produced"


def _parse_line(text: str, kind: type, path: str, line: int) -> list:
    items = [item.strip() for item in text.split(",")]
    if items and items[-1] == "":
        items.pop()  # tolerate a trailing comma
    values = []
    for item in items:
        try:
            values.append(kind(item))
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise DistributionError(
                f"{path}, line {line}: cannot parse {item!r} as {what}"
            ) from None
    return values


def load_distribution(path: str | os.PathLike) -> TraceDistribution:
    """Reads a distribution file (format in the module docstring).

    Raises:
      DistributionError: naming the file and line, if the file is malformed.
      OSError: if it cannot be read.
    """
    path = os.fspath(path)
    with open(path) as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != 3:
        raise DistributionError(
            f"{path}: expected 3 lines (unique ids, stack distances, cumulative "
            f"probabilities), found {len(lines)}"
        )
    ids = _parse_line(lines[0], int, path, 1)
    dists = _parse_line(lines[1], int, path, 2)
    cdf = _parse_line(lines[2], float, path, 3)
    try:
        return TraceDistribution(np.array(ids), np.array(dists), np.array(cdf))
    except DistributionError as e:
        raise DistributionError(f"{path}, {e}") from None


def save_distribution(
    dist: TraceDistribution, path: str | os.PathLike, *, precision: int | None = None
) -> None:
    """Writes a distribution file in the reference's format (``", "`` separators).

    Args:
      dist: the distribution.
      path: the file to write.
      precision: significant digits of the probabilities; ``None`` writes them
        exactly (round-trip). Rounding keeps the CDF non-decreasing and its last
        value 1.
    """
    if precision is None:
        probs = [repr(float(c)) for c in dist.cdf]
    else:
        probs = [f"{float(c):.{precision}g}" for c in dist.cdf]
    probs[-1] = "1.0"
    with open(path, "w") as f:
        f.write(", ".join(str(int(i)) for i in dist.unique_ids) + "\n")
        f.write(", ".join(str(int(d)) for d in dist.distances) + "\n")
        f.write(", ".join(probs) + "\n")


def stack_distances(ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LRU stack distance of every access of a trace.

    Args:
      ids: the accessed ids, in order.

    Returns:
      ``(distances int64 [N], unique_ids int64 [U])``: 0 for the first access of
      an id, else the number of distinct ids accessed since its previous access,
      itself included (an immediate repeat is 1); the distinct ids in order of
      first access.
    """
    seq = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
    n = len(seq)
    # Fenwick tree over access times 1..n; time t is marked while it is the
    # latest access of its id, so marks at times >= tau count the distinct ids
    # used since tau.
    tree = [0] * (n + 1)
    last: dict[int, int] = {}
    out = array("q", bytes(8 * n))
    unique: list[int] = []
    marked = 0
    for t, x in enumerate(seq, start=1):
        tau = last.get(x)
        if tau is None:
            unique.append(x)
        else:
            below = 0  # marks at times < tau
            i = tau - 1
            while i > 0:
                below += tree[i]
                i &= i - 1
            out[t - 1] = marked - below
            i = tau
            while i <= n:
                tree[i] -= 1
                i += i & -i
            marked -= 1
        i = t
        while i <= n:
            tree[i] += 1
            i += i & -i
        marked += 1
        last[x] = t
    return np.frombuffer(out, dtype=np.int64).copy(), np.array(unique, dtype=np.int64)


def profile_trace(ids: Sequence[int] | np.ndarray) -> TraceDistribution:
    """The distribution of a trace: its first-access order and stack-distance CDF.

    Raises:
      ValueError: if the trace is empty.
    """
    if len(ids) == 0:
        raise ValueError("cannot profile an empty trace")
    dists, unique = stack_distances(ids)
    values, counts = np.unique(dists, return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()
    return TraceDistribution(unique, values, cdf)


class TraceGenerator:
    """Stateful LRU replay of a :class:`TraceDistribution` (see the module docstring).

    Args:
      dist: the distribution.
      rng: a ``np.random.Generator`` (or any object whose ``random(k)`` returns
        ``k`` doubles in [0, 1)) or a seed for ``np.random.default_rng``; access
        ``i`` of the stream uses the ``i``-th double, one ``random(k)`` call per
        :meth:`next_ids` call.
      enable_padding: exclude distance 0 once all ids of the distribution were used.
    """

    def __init__(
        self,
        dist: TraceDistribution,
        rng: np.random.Generator | int | None = None,
        *,
        enable_padding: bool = False,
    ) -> None:
        self.dist = dist
        self._rng = rng if hasattr(rng, "random") else np.random.default_rng(rng)
        self._padding = bool(enable_padding)
        self._unique = dist.unique_ids.tolist()
        self._dist_list = dist.distances.tolist()
        self._cdf_list = dist.cdf.tolist()
        self._max_distance = self._dist_list[-1]
        # The stack and the unused ids share one list, as
        #   [dead prefix (lo items)] [unused ids, next first] [used ids, bottom .. top].
        # Distance 0 always takes the item just after the dead prefix: the next
        # unused id, or once all are used, the least recently used one (the
        # wrap-around). Taking it moves ``lo`` up instead of an O(U) ``pop(0)``;
        # the dead prefix is dropped at the end of each call, so between calls
        # the list holds exactly the U ids.
        self._stack: list[int] = list(self._unique)
        self._next_new = 0
        # Padding can only exclude distance 0 if something else has probability.
        self._can_exclude_new = self._padding and dist.cdf[0] < 1.0
        self._guide = dist.guide_table()

    @property
    def depth(self) -> int:
        """Ids on the LRU stack now (used at least once)."""
        return min(self._next_new, len(self._unique))

    def _search(self, v: np.ndarray) -> np.ndarray:
        """``np.searchsorted(cdf, v, side="right")`` for ``v`` in [0, 1], via the guide."""
        bins = np.minimum((v * _GUIDE_BINS).astype(np.intp), _GUIDE_BINS - 1)
        idx = self._guide[bins].astype(np.intp)
        unsure = np.flatnonzero(idx < 0)
        if unsure.size:
            idx[unsure] = np.searchsorted(self.dist.cdf, v[unsure], side="right")
        return idx

    def _free_distances(self, u: np.ndarray) -> np.ndarray:
        idx = self._search(u)
        np.minimum(idx, len(self._dist_list) - 1, out=idx)
        return self.dist.distances[idx]

    def _padded_distances(self, u: np.ndarray) -> np.ndarray:
        c0 = self.dist.cdf[0]
        idx = self._search(c0 + u * (1.0 - c0))
        np.clip(idx, 1, len(self._dist_list) - 1, out=idx)
        return self.dist.distances[idx]

    def next_ids(self, k: int) -> np.ndarray:
        """The next ``k`` accesses of the stream, int64 ``[k]`` (with repeats)."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        u = self._rng.random(k)
        out: list[int] = []
        lo = t = 0
        while t < k:
            if self.depth < self._max_distance:
                t, lo = self._warm_up(u, t, lo, out)
            else:
                t, lo = self._replay(u, t, lo, out)
        del self._stack[:lo]
        return np.fromiter(out, dtype=np.int64, count=k)

    def _warm_up(self, u: np.ndarray, t: int, lo: int, out: list[int]) -> tuple[int, int]:
        """Accesses while the stack is shallower than the largest distance."""
        dists, cdf, stack = self._dist_list, self._cdf_list, self._stack
        while t < u.shape[0] and self._next_new < self._max_distance:
            j = bisect.bisect_right(dists, self._next_new) - 1  # largest reachable
            i = min(bisect.bisect_right(cdf, float(u[t]) * cdf[j]), j)
            s = dists[i]
            if s:
                x = stack.pop(-s)
            else:  # a new id (the warm-up ends before they run out)
                x = stack[lo]
                lo += 1
                self._next_new += 1
            stack.append(x)
            out.append(x)
            t += 1
        return t, lo

    def _replay(self, u: np.ndarray, t: int, lo: int, out: list[int]) -> tuple[int, int]:
        """Accesses once every distance is reachable, from ``u[t:]``.

        Stops right after the access that uses the last new id if padding must
        then exclude distance 0. Returns the new ``(t, lo)``.
        """
        remaining = len(self._unique) - self._next_new
        if self._can_exclude_new and remaining <= 0:
            s = self._padded_distances(u[t:])
        else:
            s = self._free_distances(u[t:])
        zeros = np.flatnonzero(s == 0)
        if self._can_exclude_new and 0 < remaining <= zeros.size:
            s = s[: zeros[remaining - 1] + 1]
            zeros = zeros[:remaining]
        index = -s
        index[zeros] = np.arange(lo, lo + zeros.size)
        stack = self._stack
        push, pop = stack.append, stack.pop
        if zeros.size:
            fns = [pop] * s.shape[0]
            get = stack.__getitem__
            for z in zeros.tolist():
                fns[z] = get
            out += [push(x := f(i)) or x for f, i in zip(fns, index.tolist(), strict=True)]
        else:
            out += [push(x := pop(i)) or x for i in index.tolist()]
        self._next_new += zeros.size
        return t + s.shape[0], lo + zeros.size


def table_file(pattern: str, table: int) -> str:
    """Table ``table``'s distribution file: the last ``j`` of the file name -> index."""
    head, name = os.path.split(pattern)
    at = name.rfind("j")
    if at < 0:
        return pattern
    return os.path.join(head, name[:at] + str(table) + name[at + 1 :])


def _reduce_ids(ids: np.ndarray, size: int, source: str) -> np.ndarray:
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        key = (source, size)
        if key not in _warned:
            _warned.add(key)
            _LOG.warning(
                "distribution %s has ids outside the table's %d rows (range %d..%d); "
                "using them modulo %d",
                source,
                size,
                int(ids.min()),
                int(ids.max()),
                size,
            )
        ids = np.mod(ids, size)
    return ids


class _SyntheticStream:
    """One pass over a synthetic data set: per-table generators, batch by batch."""

    def __init__(
        self,
        dists: Sequence[TraceDistribution],
        sources: Sequence[str],
        table_sizes: Sequence[int],
        num_dense: int,
        num_indices_per_lookup: int,
        fixed: bool,
        enable_padding: bool,
        seed: int,
    ) -> None:
        self.gens = [
            TraceGenerator(d, np.random.default_rng([seed, 1, t]), enable_padding=enable_padding)
            for t, d in enumerate(dists)
        ]
        self.sources = sources
        self.table_sizes = table_sizes
        self.num_dense = num_dense
        self.h = num_indices_per_lookup
        self.fixed = fixed
        self.seed = seed

    def batch(self, b: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 0, b])
        dense = rng.random((n, self.num_dense)).astype(np.float32)
        ids = np.empty((n, len(self.gens), self.h), dtype=np.int64)
        for t, (gen, size) in enumerate(zip(self.gens, self.table_sizes, strict=True)):
            if self.fixed:
                sizes = np.full(n, self.h, dtype=np.int64)
            else:
                sizes = random_data.bag_sizes(rng.random(n), size, self.h)
            flat = _reduce_ids(gen.next_ids(int(sizes.sum())), size, self.sources[t])
            ids[:, t, :] = random_data.pack_bags(flat, sizes, self.h)
        targets = rng.random((n, 1)).astype(np.float32)
        return dense, ids, targets


def synthetic_dataset(
    *,
    trace_file_pattern: str,
    table_sizes: Sequence[int],
    num_dense: int,
    batch_size: int,
    num_batches: int,
    num_indices_per_lookup: int,
    num_indices_per_lookup_fixed: bool,
    enable_padding: bool,
    seed: int,
    round_targets: bool = False,
    data_size: int | None = None,
    multi_hot: bool = True,
) -> tf.data.Dataset:
    """Trace-driven synthetic data as a ``tf.data.Dataset`` (see the module docstring).

    Args:
      trace_file_pattern: distribution file pattern (``data_trace_file``); the last
        ``j`` of the file name is replaced by the table index.
      table_sizes: rows of each embedding table.
      num_dense: dense features per example.
      batch_size: examples per batch.
      num_batches: if > 0, that many full batches; if 0, ``data_size`` decides.
      num_indices_per_lookup: largest bag size ``H``; the padded bag width.
      num_indices_per_lookup_fixed: every bag takes exactly ``H`` accesses.
      enable_padding: ``data_trace_enable_padding``: no new ids once all are used.
      seed: the same seed gives the same data, every pass.
      round_targets: round the labels to 0/1.
      data_size: examples in the data set when ``num_batches`` is 0.
      multi_hot: if False, ``sparse_features`` is ``[B, T]``; needs ``H == 1``.

    Returns:
      A data set with the structure of :func:`random_data.random_dataset`'s.

    Raises:
      DistributionError: if a distribution file is malformed.
      OSError: if one cannot be read.
    """
    table_sizes = random_data.check_generator_args(
        table_sizes, num_indices_per_lookup, seed, multi_hot
    )
    sources = [table_file(trace_file_pattern, t) for t in range(len(table_sizes))]
    cache: dict[str, TraceDistribution] = {}
    for path in sources:
        if path not in cache:
            cache[path] = load_distribution(path)
    dists = [cache[p] for p in sources]
    sizes = random_data.batch_sizes(batch_size, num_batches, data_size)

    def batch_iterator() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        stream = _SyntheticStream(
            dists,
            sources,
            table_sizes,
            num_dense,
            num_indices_per_lookup,
            num_indices_per_lookup_fixed,
            enable_padding,
            seed,
        )
        for b, n in enumerate(sizes):
            yield random_data.finish_batch(stream.batch(b, n), round_targets, multi_hot)

    return random_data.dataset_from_batches(
        sizes,
        batch_iterator,
        num_dense=num_dense,
        num_tables=len(table_sizes),
        width=num_indices_per_lookup,
        multi_hot=multi_hot,
    )


def read_trace(path: str | os.PathLike) -> np.ndarray:
    """Reads a raw trace: ids separated by commas and/or whitespace, any lines."""
    with open(path) as f:
        text = f.read()
    items = [x for x in re.split(r"[,\s]+", text) if x]
    try:
        return np.array([int(x) for x in items], dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from None


def write_trace(ids: np.ndarray, path: str | os.PathLike) -> None:
    """Writes a raw trace as one line of ``", "``-separated ids."""
    with open(path, "w") as f:
        f.write(", ".join(str(int(x)) for x in ids) + "\n")


def zipf_trace(num_ids: int, length: int, exponent: float, seed: int) -> np.ndarray:
    """Independent draws from a Zipf law over ``num_ids`` ids (rank r has weight r^-a).

    Ranks are assigned to ids by a random permutation, so popular ids are spread
    over ``[0, num_ids)``.
    """
    rng = np.random.default_rng(seed)
    weights = np.arange(1, num_ids + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights) / weights.sum()
    ranks = np.minimum(np.searchsorted(cdf, rng.random(length), side="right"), num_ids - 1)
    return rng.permutation(num_ids)[ranks]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``profile``, ``generate`` and ``zipf`` (see the module docstring)."""
    parser = errors.ArgumentParser(
        prog="python -m input_pipeline.trace", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile", help="raw trace -> distribution file")
    p.add_argument("--trace", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--precision", type=int, default=None, help="significant digits of the CDF")
    g = sub.add_parser("generate", help="distribution file -> synthetic raw trace")
    g.add_argument("--dist", required=True)
    g.add_argument("--num", type=int, required=True)
    g.add_argument("--seed", type=int, default=123)
    g.add_argument("--output", required=True)
    g.add_argument("--enable_padding", action="store_true")
    z = sub.add_parser("zipf", help="write a trace of Zipf-distributed ids")
    z.add_argument("--num_ids", type=int, required=True)
    z.add_argument("--length", type=int, required=True)
    z.add_argument("--exponent", type=float, default=1.1)
    z.add_argument("--seed", type=int, default=123)
    z.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    try:
        _run_command(args)
    except Exception as error:  # noqa: BLE001  (every failure: one line, exit 2)
        return errors.report(error, sys.argv if argv is None else argv)
    return 0


def _run_command(args: argparse.Namespace) -> None:
    if args.command == "profile":
        dist = profile_trace(read_trace(args.trace))
        save_distribution(dist, args.output, precision=args.precision)
        print(
            f"{args.output}: {dist.unique_ids.size} ids, {dist.distances.size} distances, "
            f"P(new id) = {dist.cdf[0]:.4g}"
        )
    elif args.command == "generate":
        gen = TraceGenerator(
            load_distribution(args.dist), args.seed, enable_padding=args.enable_padding
        )
        write_trace(gen.next_ids(args.num), args.output)
    else:
        write_trace(zipf_trace(args.num_ids, args.length, args.exponent, args.seed), args.output)


if __name__ == "__main__":
    sys.exit(main())
