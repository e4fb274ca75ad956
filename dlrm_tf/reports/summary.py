"""The end-of-run summary: what a run did and where its artifacts went, from ``history.json``."""

from __future__ import annotations

import math
import os


def run_summary(run: dict) -> dict:
    """The numbers of the summary, from a loaded ``history.json``.

    Keys: ``steps`` (the optimizer's step at the end), ``start_step``, ``trained_steps``,
    ``epochs`` (trained steps / steps per epoch), ``examples``, ``seconds`` (the
    training loop, evaluations included), ``test_seconds`` (evaluations inside the
    loop), ``samples_per_s`` (examples / training time without evaluations), ``best``
    (the test record with the highest AUC: ``auc``, ``accuracy``, ``log_loss``,
    ``step``, ``epoch``, ``it``; None without tests) and ``final`` (the last test).
    """
    steps = int(run.get("steps", 0))
    start = int(run.get("start_step", 0))
    per_epoch = int(run.get("steps_per_epoch", 0))
    seconds = float(run.get("seconds", 0.0))
    test_seconds = float(run.get("test_seconds", 0.0))
    examples = int(run.get("examples", 0))
    train_seconds = seconds - test_seconds
    tests = [r for r in run.get("history", []) if "test" in r]
    scored = [r for r in tests if not math.isnan(float(r["test"]["auc"]))]
    best = max(scored, key=lambda r: float(r["test"]["auc"])) if scored else None
    return {
        "steps": steps,
        "start_step": start,
        "trained_steps": steps - start,
        "epochs": (steps - start) / per_epoch if per_epoch else float("nan"),
        "steps_per_epoch": per_epoch,
        "examples": examples,
        "seconds": seconds,
        "test_seconds": test_seconds,
        "samples_per_s": examples / train_seconds if train_seconds > 0 else float("nan"),
        "best": _test_entry(best),
        "final": _test_entry(tests[-1]) if tests else None,
    }


def _test_entry(record: dict | None) -> dict | None:
    if record is None:
        return None
    metrics = record["test"]
    keys = ("auc", "accuracy", "log_loss")
    return {
        **{k: float(metrics[k]) for k in keys},
        **{k: int(record[k]) for k in ("step", "epoch", "it")},
    }


def serve_command(saved_model: str, name: str = "dlrm") -> str:
    """The TF Serving command for an export ``<base>/<version>``: it mounts the base."""
    base = os.path.dirname(os.path.abspath(saved_model))
    return (
        f"docker run -p 8500:8500 -p 8501:8501 -v {base}:/models/{name} "
        f"-e MODEL_NAME={name} tensorflow/serving"
    )


def _test_text(entry: dict) -> str:
    return (
        f"AUC {entry['auc']:.4f}, accuracy {entry['accuracy'] * 100:.3f} %, "
        f"log loss {entry['log_loss']:.6f} at step {entry['step']:,} "
        f"(epoch {entry['epoch']}, it {entry['it']})"
    )


def format_summary(
    summary: dict, artifacts: dict[str, str], total_seconds: float | None = None
) -> str:
    """The summary block printed at the end of a run."""
    s = summary
    span = f"steps {s['start_step']:,} -> {s['steps']:,}, " if s["start_step"] else ""
    lines = [
        "==== Run summary ====",
        f"trained: {s['trained_steps']:,} steps ({span}{s['epochs']:.3g} epoch(s) of "
        f"{s['steps_per_epoch']:,} steps), {s['examples']:,} examples",
        f"time: {s['seconds']:.1f} s training loop ({s['test_seconds']:.1f} s of it testing), "
        f"{s['samples_per_s']:,.0f} training samples/s"
        + (f"; {total_seconds:.1f} s in all" if total_seconds is not None else ""),
    ]
    if s["best"] is None:
        lines.append("test: none (no test split, or no --test_freq on generated data)")
    else:
        lines.append(f"best test: {_test_text(s['best'])}")
        if s["final"] != s["best"]:
            lines.append(f"final test: {_test_text(s['final'])}")
    for name, path in artifacts.items():
        note = " (the best by test AUC)" if name == "model" and s["best"] else ""
        lines.append(f"{name}: {path}{note}")
    if "tensorboard" in artifacts:
        lines.append(f"view: tensorboard --logdir {artifacts['tensorboard']}")
    if "saved_model" in artifacts:
        lines.append(f"serve: {serve_command(artifacts['saved_model'])}")
    return "\n".join(lines)
