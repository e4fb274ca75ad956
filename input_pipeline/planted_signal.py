"""Criteo-shaped synthetic click data with a planted, known signal.

Rows look like Criteo's: 13 heavy-tailed integer counts (a few negative in ``I2``),
26 categorical features written as 8-hex-digit values with Zipf-like frequencies
over per-feature vocabularies (the Kaggle cardinalities scaled down: ``k`` stays
``k`` up to 1000, above that it becomes ``1000 * sqrt(k / 1000)``), and Criteo's
approximate missing-value rates.

Labels are drawn from a *planted* logistic model of the features as the converter
preprocesses them: ``P(y=1) = sigmoid(b + sum_j w_j * log1p(max(I_j, 0)) +
sum_k effect_k[C_k])`` over a few dense and categorical features, calibrated to
~25 % positives. The model (the "world") depends only on ``world_seed``; rows
depend on ``seed``, so training and test files drawn with different seeds share
it. ``generate`` returns each row's true probability, and ``oracle_auc`` gives
the AUC the Bayes-optimal scorer reaches, the ceiling a trained model approaches.

CLI: ``python -m input_pipeline.planted_signal --output=FILE --num_rows=N --seed=S [--gzip]``.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import sys
import time
from collections.abc import Iterator

from input_pipeline.tf_startup import start_tensorflow

if __name__ == "__main__":  # the command: oneDNN, start-up lines only on request
    start_tensorflow()

import numpy as np  # noqa: E402

from input_pipeline.auc import roc_auc  # noqa: E402
from input_pipeline.criteo import KAGGLE_CARDINALITIES, NUM_DENSE, NUM_SPARSE  # noqa: E402

CHUNK_ROWS = 65536

# Approximate fraction of empty fields per feature in Criteo Kaggle.
DENSE_MISSING_RATES = (
    0.45,
    0.0,
    0.21,
    0.22,
    0.03,
    0.22,
    0.04,
    0.0005,
    0.04,
    0.45,
    0.04,
    0.77,
    0.22,
)
SPARSE_MISSING_RATES = (
    0.0, 0.0, 0.034, 0.034, 0.0, 0.12, 0.0, 0.0, 0.0, 0.0, 0.0, 0.034, 0.0,
    0.0, 0.0, 0.034, 0.0, 0.0, 0.44, 0.44, 0.034, 0.76, 0.0, 0.034, 0.44, 0.44,
)  # fmt: skip
# Log-normal shape of the counts: count = floor(exp(N(mu, sigma))) - 1.
_DENSE_MU = (1.0, 2.5, 2.0, 1.5, 7.0, 4.0, 1.5, 2.5, 3.5, 0.3, 1.0, 0.5, 1.5)
_DENSE_SIGMA = (1.2, 1.5, 1.5, 1.0, 2.0, 1.8, 1.3, 1.0, 1.2, 0.6, 0.8, 1.0, 1.0)
# The planted model: weights of log1p(count) and the spread of per-value effects.
_DENSE_WEIGHTS = {0: 0.3, 2: -0.2, 4: 0.1, 6: 0.25, 10: 0.3, 12: -0.15}
_SPARSE_EFFECT_SD = {0: 0.45, 1: 0.35, 2: 0.35, 5: 0.45, 8: 0.35, 13: 0.5, 16: 0.35, 19: 0.45}
_POSITIVE_RATE = 0.25


def scaled_cardinalities(max_full: int = 1000) -> tuple[int, ...]:
    """The Kaggle cardinalities scaled down: ``k`` if ``k <= max_full`` else
    ``max_full * sqrt(k / max_full)``."""
    return tuple(
        k if k <= max_full else int(round(max_full * np.sqrt(k / max_full)))
        for k in KAGGLE_CARDINALITIES
    )


@dataclasses.dataclass(frozen=True)
class World:
    """The generating distribution: vocabularies, frequencies and the planted model."""

    cardinalities: tuple[int, ...]
    hex_values: tuple[np.ndarray, ...]  # per feature: the uint32 value of each rank
    hex_text: tuple[np.ndarray, ...]  # per feature: '%08x' of each rank, then "" (missing)
    last_text: np.ndarray  # the last feature's text + "\n" + next label ("0", "1" or "")
    exponents: np.ndarray  # [26] Zipf-like exponent of each feature's frequencies
    effects: dict[int, np.ndarray]  # feature -> logit effect per rank (+1: missing)
    dense_weights: np.ndarray  # [13] weight of log1p(max(count, 0))
    intercept: float

    def logits(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """The planted logit for columns as produced by ``_draw_features``."""
        z = np.full(len(features["counts"]), self.intercept)
        dense = np.log1p(np.maximum(features["counts"], 0)) * ~features["count_missing"]
        z += dense @ self.dense_weights
        for feature, effect in self.effects.items():
            ranks = np.where(
                features["categorical_missing"][:, feature],
                self.cardinalities[feature],
                features["ranks"][:, feature],
            )
            z += effect[ranks]
        return z


@functools.lru_cache(maxsize=8)
def make_world(world_seed: int = 0, max_full_cardinality: int = 1000) -> World:
    """Builds (and caches) the world for a seed; equal seeds give equal worlds."""
    rng = np.random.default_rng([world_seed, 7331])
    cards = scaled_cardinalities(max_full_cardinality)
    hex_values, hex_text = [], []
    for card in cards:
        values = np.unique(rng.integers(0, 2**32, size=card + card // 8 + 16, dtype=np.uint64))
        while len(values) < card:  # pragma: no cover - collisions are rare
            extra = rng.integers(0, 2**32, size=card, dtype=np.uint64)
            values = np.unique(np.concatenate([values, extra]))
        values = rng.permutation(values)[:card]
        hex_values.append(values)
        hex_text.append(np.array([f"{v:08x}" for v in values.tolist()] + [""], dtype=object))
    exponents = rng.uniform(1.05, 1.25, size=NUM_SPARSE)
    effects = {f: rng.normal(0.0, sd, size=cards[f] + 1) for f, sd in _SPARSE_EFFECT_SD.items()}
    dense_weights = np.zeros(NUM_DENSE)
    for j, w in _DENSE_WEIGHTS.items():
        dense_weights[j] = w
    last_text = np.array(
        [f"{text}\n{label}" for text in hex_text[-1].tolist() for label in ("0", "1", "")],
        dtype=object,
    )
    world = World(
        cards,
        tuple(hex_values),
        tuple(hex_text),
        last_text,
        exponents,
        effects,
        dense_weights,
        0.0,
    )
    calibration = world.logits(
        _draw_features(world, 50_000, np.random.default_rng([world_seed, 1]))
    )
    low, high = -20.0, 20.0
    for _ in range(60):  # bisection on the intercept for the target positive rate
        mid = (low + high) / 2
        rate = np.mean(1.0 / (1.0 + np.exp(-(calibration + mid))))
        low, high = (mid, high) if rate < _POSITIVE_RATE else (low, mid)
    return dataclasses.replace(world, intercept=(low + high) / 2)


_SMALL_COUNT_MIN = -8
_SMALL_COUNT_TEXT = np.array(
    [str(v) for v in range(_SMALL_COUNT_MIN, 1 << 16)] + [""], dtype=object
)


def _count_text(counts: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Counts as an object array of strings ("" where missing)."""
    index = counts - _SMALL_COUNT_MIN
    small = (index >= 0) & (index < len(_SMALL_COUNT_TEXT) - 1)
    text = _SMALL_COUNT_TEXT[np.where(small, index, 0)]
    for row in np.flatnonzero(~small).tolist():
        text[row] = str(int(counts[row]))
    text[missing] = ""
    return text


def _draw_features(world: World, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    mu = np.asarray(_DENSE_MU)
    sigma = np.asarray(_DENSE_SIGMA)
    counts = np.floor(np.exp(rng.normal(mu, sigma, size=(n, NUM_DENSE)))).astype(np.int64) - 1
    negative = rng.random(n) < 0.08  # I2 holds a few small negative counts
    counts[negative, 1] = -rng.integers(1, 4, size=int(negative.sum()))
    count_missing = rng.random((n, NUM_DENSE)) < np.asarray(DENSE_MISSING_RATES)
    # Zipf-like ranks by inverting the continuous power law x^-s on [1, card + 1).
    cards = np.asarray(world.cardinalities, dtype=np.float64)
    one_minus_s = 1.0 - world.exponents
    tail = (cards + 1.0) ** one_minus_s
    x = (1.0 - rng.random((n, NUM_SPARSE)) * (1.0 - tail)) ** (1.0 / one_minus_s)
    ranks = np.minimum(x.astype(np.int64) - 1, np.asarray(world.cardinalities) - 1)
    categorical_missing = rng.random((n, NUM_SPARSE)) < np.asarray(SPARSE_MISSING_RATES)
    return {
        "counts": counts,
        "count_missing": count_missing,
        "ranks": ranks,
        "categorical_missing": categorical_missing,
    }


@dataclasses.dataclass
class Sample:
    """Generated rows, column-wise, with the true click probability of each."""

    labels: np.ndarray  # int8 [N]
    counts: np.ndarray  # int64 [N, 13] (meaningless where count_missing)
    count_missing: np.ndarray  # bool [N, 13]
    categorical: np.ndarray  # int64 [N, 26]: the value int(hex, 16) (0 where missing)
    categorical_missing: np.ndarray  # bool [N, 26]
    probabilities: np.ndarray  # float64 [N]: the planted P(label = 1)
    ranks: np.ndarray  # int64 [N, 26]: index of each value in the world's vocabulary
    world_seed: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def text(self) -> str:
        """The rows as raw Criteo text: 40 tab-separated fields and a newline each."""
        n = len(self)
        if n == 0:
            return ""
        world = make_world(self.world_seed)
        # One str.join over every field. The last field of row i is merged with the
        # label of row i + 1 (a precomputed "value\nlabel" text), so that the join's
        # tab separators fall exactly between fields.
        table = np.empty((NUM_DENSE + NUM_SPARSE, n), dtype=object)
        for j in range(NUM_DENSE):
            table[j] = _count_text(self.counts[:, j], self.count_missing[:, j])
        ranks = np.where(self.categorical_missing, np.asarray(world.cardinalities), self.ranks)
        for f in range(NUM_SPARSE - 1):
            table[NUM_DENSE + f] = world.hex_text[f][ranks[:, f]]
        next_label = np.append(self.labels[1:], 2)
        table[-1] = world.last_text[ranks[:, -1] * 3 + next_label]
        first_label = "01"[int(self.labels[0])]
        return first_label + "\t" + "\t".join(table.T.ravel().tolist())

    def lines(self) -> list[str]:
        """The rows as raw Criteo lines (40 tab-separated fields, no newline)."""
        return self.text().splitlines()


def _generate_chunk(world: World, n: int, rng: np.random.Generator, world_seed: int) -> Sample:
    features = _draw_features(world, n, rng)
    probabilities = 1.0 / (1.0 + np.exp(-world.logits(features)))
    labels = (rng.random(n) < probabilities).astype(np.int8)
    categorical = np.empty((n, NUM_SPARSE), np.int64)
    for f in range(NUM_SPARSE):
        categorical[:, f] = world.hex_values[f][features["ranks"][:, f]].astype(np.int64)
    categorical[features["categorical_missing"]] = 0
    return Sample(
        labels=labels,
        counts=features["counts"],
        count_missing=features["count_missing"],
        categorical=categorical,
        categorical_missing=features["categorical_missing"],
        probabilities=probabilities,
        ranks=features["ranks"],
        world_seed=world_seed,
    )


def generate_chunks(
    num_rows: int, seed: int, *, world_seed: int = 0, chunk_rows: int = CHUNK_ROWS
) -> Iterator[Sample]:
    """Yields the rows of ``generate(num_rows, seed)`` in chunks (bounded memory)."""
    world = make_world(world_seed)
    for index, start in enumerate(range(0, num_rows, chunk_rows)):
        n = min(chunk_rows, num_rows - start)
        yield _generate_chunk(world, n, np.random.default_rng([seed, index]), world_seed)


def generate(num_rows: int, seed: int, *, world_seed: int = 0) -> Sample:
    """Generates ``num_rows`` rows; the same ``(num_rows, seed, world_seed)`` gives
    the same rows (drawn in chunks of ``CHUNK_ROWS``, like ``write_text``)."""
    chunks = list(generate_chunks(num_rows, seed, world_seed=world_seed))
    if not chunks:
        return _generate_chunk(make_world(world_seed), 0, np.random.default_rng(seed), world_seed)
    arrays = {
        f.name: np.concatenate([getattr(c, f.name) for c in chunks])
        for f in dataclasses.fields(Sample)
        if f.name != "world_seed"
    }
    return Sample(**arrays, world_seed=world_seed)


@dataclasses.dataclass
class Written:
    """What ``write_text`` wrote: labels and true probabilities, in line order."""

    path: str
    labels: np.ndarray
    probabilities: np.ndarray


def write_text(
    path: str | os.PathLike,
    num_rows: int,
    seed: int,
    *,
    use_gzip: bool = False,
    world_seed: int = 0,
    crlf: bool = False,
) -> Written:
    """Writes ``generate(num_rows, seed)`` as a raw Criteo text file, chunk by chunk.

    Args:
      path: output file.
      num_rows: number of lines.
      seed: row seed.
      use_gzip: gzip-compress the file (level 1).
      world_seed: selects the planted model.
      crlf: end lines with ``\\r\\n`` instead of ``\\n``.
    """
    path = os.fspath(path)
    labels, probabilities = [], []
    opener = functools.partial(gzip.open, compresslevel=1) if use_gzip else open
    with opener(path, "wb") as f:
        for chunk in generate_chunks(num_rows, seed, world_seed=world_seed):
            text = chunk.text()
            if crlf:
                text = text.replace("\n", "\r\n")
            f.write(text.encode("ascii"))
            labels.append(chunk.labels)
            probabilities.append(chunk.probabilities)
    return Written(
        path,
        np.concatenate(labels) if labels else np.zeros(0, np.int8),
        np.concatenate(probabilities) if probabilities else np.zeros(0),
    )


def oracle_auc(probabilities: np.ndarray, labels: np.ndarray | None = None) -> float:
    """The AUC of the Bayes-optimal scorer (the true probabilities).

    With ``labels``: its AUC on those drawn labels (what a perfect model would
    score on this sample). Without: its expected AUC, treating each probability
    as a soft label, ``E[#correctly ordered pos/neg pairs] / E[#pos/neg pairs]``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if labels is not None:
        return roc_auc(labels, p)
    unique, inverse = np.unique(p, return_inverse=True)
    pos = np.bincount(inverse, weights=p, minlength=len(unique))
    neg = np.bincount(inverse, weights=1.0 - p, minlength=len(unique))
    negatives_below = np.cumsum(neg) - neg
    # Pairs (i, j) with i != j; a row never pairs with itself.
    correct = np.sum(pos * (negatives_below + 0.5 * neg)) - 0.5 * np.sum(p * (1.0 - p))
    total = pos.sum() * neg.sum() - np.sum(p * (1.0 - p))
    return float(correct / total)


def main(argv: list[str]) -> None:
    """CLI entry point (absl)."""
    from absl import flags

    from input_pipeline import errors

    flag_values = flags.FLAGS
    del argv
    start = time.perf_counter()
    try:
        if flag_values.num_rows < 0:
            raise ValueError(f"--num_rows={flag_values.num_rows}: must be >= 0")
        for path in (flag_values.output, flag_values.probabilities_output):
            if path:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        written = write_text(
            flag_values.output,
            flag_values.num_rows,
            flag_values.seed,
            use_gzip=flag_values.gzip,
            world_seed=flag_values.world_seed,
        )
        if flag_values.probabilities_output:
            np.save(flag_values.probabilities_output, written.probabilities)
    except Exception as error:  # noqa: BLE001  (every failure: one line, exit 2)
        sys.exit(errors.report(error))
    elapsed = time.perf_counter() - start
    print(
        f"wrote {flag_values.num_rows} rows to {flag_values.output} in {elapsed:.1f} s"
        f" ({flag_values.num_rows / max(elapsed, 1e-9):,.0f} rows/s);"
        f" positives {written.labels.mean() if len(written.labels) else 0:.3f},"
        f" oracle AUC {oracle_auc(written.probabilities) if len(written.labels) else 0:.4f}",
        file=sys.stderr,
    )


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("output", None, "Raw Criteo text file to write.", required=True)
    flags.DEFINE_integer("num_rows", 100_000, "Number of lines.")
    flags.DEFINE_integer("seed", 0, "Row seed.")
    flags.DEFINE_integer("world_seed", 0, "Seed of the planted model.")
    flags.DEFINE_boolean("gzip", False, "Gzip the output.")
    flags.DEFINE_string("probabilities_output", None, "Optional .npy file for true P(y=1).")
    flags.DEFINE_boolean("verbose", False, "On failure, print the traceback too.")


if __name__ == "__main__":
    from absl import app

    from input_pipeline.errors import parse_absl_flags

    _define_flags()
    app.run(main, flags_parser=parse_absl_flags)
