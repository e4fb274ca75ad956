"""One JSON line summarising a training run, printed by the ``bench/*.sh`` scripts last.

Reads the run's ``history.json`` (written by ``python -m dlrm_tf.main``) and,
for the time per iteration, the run's printed output::

    python bench/summarize_run.py --log=RUN.log [--run_dir=DIR] [--name=NAME]

Without ``--run_dir`` the history is the one named by the ``history: PATH``
line the CLI prints at its end (so a ``--run_dir`` given to the CLI in any way
is followed). The JSON object has these keys (``null`` where the run has no
such value)::

    benchmark         NAME
    iterations        training steps taken
    ms_per_it         mean of the printed "ms/it" over all iterations
                      (from history.json's seconds / steps if none was printed)
    ms_per_it_steady  the same without the first printed window (graph tracing)
    samples_per_s     training examples per second over the printed windows
    train_loss        loss of the last printed window
    train_accuracy    accuracy of the last printed window (0..1)
    test_auc, test_accuracy, test_log_loss, test_loss   the final evaluation
    seconds           wall time of the training loop
    history           path of history.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

TRAIN_LINE = re.compile(
    r"Finished training it (?P<it>\d+)/(?P<total>\d+) of epoch (?P<epoch>\d+), "
    r"(?P<ms>-?[0-9.]+) ms/it"
)
HISTORY_LINE = re.compile(r"^history: (?P<path>.+)$")


def parse_log(text: str) -> tuple[list[tuple[int, float]], str | None]:
    """The printed windows as (iterations, ms/it), and the history path the CLI printed."""
    windows: list[tuple[int, float]] = []
    history = None
    previous: tuple[int, int] | None = None  # (epoch, it) of the last training line
    for line in text.splitlines():
        match = TRAIN_LINE.search(line)
        if match:
            epoch, it = int(match["epoch"]), int(match["it"])
            start = previous[1] if previous and previous[0] == epoch and previous[1] < it else 0
            windows.append((it - start, float(match["ms"])))
            previous = (epoch, it)
            continue
        match = HISTORY_LINE.match(line.strip())
        if match:
            history = match["path"].strip()
    return windows, history


def _finite(value, digits: int | None = None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return round(value, digits) if digits is not None else value


def _mean_ms(windows: list[tuple[int, float]]) -> float | None:
    timed = [(n, ms) for n, ms in windows if ms >= 0 and n > 0]
    iterations = sum(n for n, _ in timed)
    if not iterations:
        return None
    return sum(n * ms for n, ms in timed) / iterations


def summarize(history_path: str, log_text: str = "", name: str = "") -> dict:
    """The summary of one run (see the module docstring for the keys)."""
    with open(history_path) as f:
        run = json.load(f)
    records = run.get("history", [])
    train = [r for r in records if "train_loss" in r]
    windows, _ = parse_log(log_text)

    steps = int(run.get("steps", 0))
    seconds = _finite(run.get("seconds"))
    ms_per_it = _mean_ms(windows)
    if ms_per_it is None and steps and seconds is not None:
        ms_per_it = 1000.0 * seconds / steps
    steady = _mean_ms(windows[1:]) if len(windows) > 1 else None

    # Examples per second over all windows: sum(examples) / sum(time); each record's
    # examples are proportional to its iterations, so the batch size cancels out.
    samples_per_s = None
    previous: tuple[int, int] | None = None
    weighted_iters, weighted_time = 0, 0.0
    for record in train:
        epoch, it = int(record["epoch"]), int(record["it"])
        start = previous[1] if previous and previous[0] == epoch and previous[1] < it else 0
        previous = (epoch, it)
        rate = _finite(record.get("samples_per_s"))
        if rate:
            weighted_iters += it - start
            weighted_time += (it - start) / rate
    if weighted_time > 0:
        samples_per_s = weighted_iters / weighted_time

    last = train[-1] if train else {}
    test = run.get("test") or {}
    return {
        "benchmark": name or None,
        "iterations": steps,
        "ms_per_it": _finite(ms_per_it, 3),
        "ms_per_it_steady": _finite(steady, 3),
        "samples_per_s": _finite(samples_per_s, 1),
        "train_loss": _finite(last.get("train_loss")),
        "train_accuracy": _finite(last.get("train_accuracy")),
        "test_auc": _finite(test.get("auc")),
        "test_accuracy": _finite(test.get("accuracy")),
        "test_log_loss": _finite(test.get("log_loss")),
        "test_loss": _finite(test.get("loss")),
        "seconds": _finite(seconds, 3),
        "history": os.path.abspath(history_path),
    }


def main(argv: list[str] | None = None) -> int:
    """Prints the summary as one JSON line; exit 1 if the run's history cannot be found."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", required=True, help="the run's captured standard output")
    parser.add_argument("--run_dir", default="", help="the run's directory (default: from --log)")
    parser.add_argument("--name", default="", help="benchmark name to put in the summary")
    args = parser.parse_args(argv)

    with open(args.log, errors="replace") as f:
        text = f.read()
    if args.run_dir:
        history = os.path.join(args.run_dir, "history.json")
    else:
        history = parse_log(text)[1]
    if not history or not os.path.exists(history):
        print(
            f"error: no history.json found (looked for {history or 'a history: line'} "
            f"in {args.log}); did the training run finish?",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(summarize(history, text, args.name), allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
