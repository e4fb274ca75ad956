"""The bench/*.sh scripts run end to end (shrunken) and end with one JSON summary line;
bench/summarize_run.py computes that summary."""

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import summarize_run  # noqa: E402

KEYS = {
    "benchmark",
    "iterations",
    "ms_per_it",
    "ms_per_it_steady",
    "samples_per_s",
    "train_loss",
    "train_accuracy",
    "test_auc",
    "test_accuracy",
    "test_log_loss",
    "test_loss",
    "seconds",
    "history",
}
TINY_MODEL = [
    "--num_batches=3",
    "--test_num_batches=2",
    "--mini_batch_size=64",
    "--test_mini_batch_size=256",
    "--arch_mlp_bot=13-16",
    "--arch_sparse_feature_size=16",
    "--arch_mlp_top=8-1",
    "--export_dir=",
    "--save_model=",
    "--noplot",
]
HAVE_PIPELINE = all(
    importlib.util.find_spec(f"input_pipeline.{m}") is not None
    for m in ("planted_signal", "convert")
)
needs_pipeline = pytest.mark.skipif(
    not HAVE_PIPELINE, reason="input_pipeline.planted_signal / input_pipeline.convert are missing"
)


def run_script(name: str, *args: str, env: dict | None = None, cwd=None):
    full_env = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable
    )
    full_env.update(env or {})
    return subprocess.run(
        ["bash", os.path.join(ROOT, "bench", name), *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def summary_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary) == KEYS
    return summary


# --- summarize_run.py -------------------------------------------------------------------


def write_history(path, records, test=None, steps=8, seconds=2.0):
    with open(path, "w") as f:
        json.dump({"history": records, "test": test, "steps": steps, "seconds": seconds}, f)


def train_record(epoch, it, loss, rate):
    return {
        "epoch": epoch,
        "it": it,
        "step": it,
        "train_loss": loss,
        "train_accuracy": 0.5,
        "samples_per_s": rate,
    }


def test_parse_log_windows_restart_with_each_epoch():
    log = "\n".join(
        [
            "Finished training it 2/4 of epoch 0, 30.00 ms/it, loss 0.5, accuracy 1.000 %",
            "Testing at - 2/4 of epoch 0, loss 0.4, auc 0.6000",
            "Finished training it 4/4 of epoch 0, 10.00 ms/it, loss 0.5, accuracy 1.000 %",
            "Finished training it 3/4 of epoch 1, 20.00 ms/it, loss 0.5, accuracy 1.000 %",
            "history: runs/x/history.json",
        ]
    )
    windows, history = summarize_run.parse_log(log)
    assert windows == [(2, 30.0), (2, 10.0), (3, 20.0)]
    assert history == "runs/x/history.json"


def test_summary_of_a_run(tmp_path):
    path = tmp_path / "history.json"
    test = {"auc": 0.75, "accuracy": 0.8, "log_loss": 0.45, "loss": 0.45}
    # 2 iterations at 100 samples/s, then 6 at 300 samples/s: 8 iterations in 0.04 time units.
    write_history(path, [train_record(0, 2, 0.7, 100.0), train_record(0, 8, 0.6, 300.0)], test)
    log = (
        "Finished training it 2/8 of epoch 0, 40.00 ms/it, loss 0.7, accuracy 50.000 %\n"
        "Finished training it 8/8 of epoch 0, 10.00 ms/it, loss 0.6, accuracy 50.000 %\n"
    )
    summary = summarize_run.summarize(str(path), log, "demo")
    assert summary["benchmark"] == "demo"
    assert summary["iterations"] == 8
    assert summary["ms_per_it"] == pytest.approx((2 * 40 + 6 * 10) / 8)
    assert summary["ms_per_it_steady"] == pytest.approx(10.0)
    assert summary["samples_per_s"] == pytest.approx(8 / (2 / 100 + 6 / 300), abs=0.1)
    assert summary["train_loss"] == 0.6
    assert (summary["test_auc"], summary["test_log_loss"]) == (0.75, 0.45)


def test_summary_without_printed_times_or_test_uses_history(tmp_path):
    path = tmp_path / "history.json"
    write_history(path, [train_record(0, 4, float("nan"), 50.0)], steps=4, seconds=2.0)
    log = "Finished training it 4/4 of epoch 0, -1.00 ms/it, loss nan, accuracy 0.000 %\n"
    summary = summarize_run.summarize(str(path), log)
    assert summary["ms_per_it"] == pytest.approx(500.0)  # 2 s / 4 steps
    assert summary["ms_per_it_steady"] is None
    assert summary["train_loss"] is None  # NaN is not JSON
    assert summary["test_auc"] is None and summary["benchmark"] is None


def test_summarize_cli_follows_the_history_line_and_fails_without_one(tmp_path, capsys):
    path = tmp_path / "history.json"
    write_history(path, [train_record(0, 1, 0.5, 10.0)], steps=1)
    log = tmp_path / "run.log"
    log.write_text(f"Finished training it 1/1 of epoch 0, 5.00 ms/it, loss 0.5\nhistory: {path}\n")
    assert summarize_run.main([f"--log={log}", "--name=x"]) == 0
    line = capsys.readouterr().out.strip()
    assert json.loads(line)["history"] == str(path)
    log.write_text("error: training failed\n")
    assert summarize_run.main([f"--log={log}"]) == 1
    assert "no history.json" in capsys.readouterr().err


# --- the scripts --------------------------------------------------------------------------


def test_dlrm_benchmark_script_with_extra_flags(tmp_path):
    tables = "-".join(["1000"] * 8)
    proc = run_script(
        "dlrm_benchmark.sh",
        "--num_batches=2",
        f"--arch_embedding_size={tables}",
        "--mini_batch_size=256",
        "--print_freq=1",
        "--noplot",
        env={"RUN_DIR": str(tmp_path / "run")},
    )
    summary = summary_of(proc)
    # The appended --num_batches=2 wins over the script's default.
    assert summary["iterations"] == 2
    assert summary["benchmark"] == "dlrm_benchmark"
    assert summary["history"] == str(tmp_path / "run" / "history.json")
    assert math.isfinite(summary["train_loss"]) and summary["ms_per_it"] > 0
    assert summary["test_auc"] is None  # random data: no test split
    assert proc.stdout.count("Finished training it") == 2


def test_criteo_script_without_data_says_what_to_pass(tmp_path):
    proc = run_script(
        "criteo_kaggle.sh", env={"PROCESSED_DATA_DIR": str(tmp_path / "none"), "RAW_DATA_FILE": ""}
    )
    assert proc.returncode == 2
    assert "RAW_DATA_FILE" in proc.stderr and "metadata.json" in proc.stderr


@pytest.fixture(scope="module")
def raw_criteo(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "train.txt"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "input_pipeline.planted_signal",
            f"--output={path}",
            "--num_rows=3000",
            "--seed=1",
        ],
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


@needs_pipeline
@pytest.mark.slow
def test_criteo_kaggle_script_converts_once_then_trains(tmp_path, raw_criteo):
    data = tmp_path / "data"
    proc = run_script(
        "criteo_kaggle.sh",
        str(raw_criteo),
        str(data),
        *TINY_MODEL,
        env={"RUN_DIR": str(tmp_path / "run")},
    )
    summary = summary_of(proc)
    assert "Converting" in proc.stdout
    assert os.path.isfile(data / "metadata.json")
    assert summary["benchmark"] == "criteo_kaggle" and summary["iterations"] == 3
    assert 0.0 <= summary["test_auc"] <= 1.0 and summary["test_log_loss"] > 0
    assert not os.path.exists(tmp_path / "run" / "export")  # --export_dir= overrides

    # Converted data is reused: no raw file needed the second time.
    converted_at = os.path.getmtime(data / "metadata.json")
    proc = run_script(
        "criteo_kaggle.sh",
        *TINY_MODEL,
        "--num_batches=2",
        env={"RUN_DIR": str(tmp_path / "run2"), "PROCESSED_DATA_DIR": str(data)},
    )
    summary = summary_of(proc)
    assert "Converting" not in proc.stdout
    assert os.path.getmtime(data / "metadata.json") == converted_at
    assert summary["iterations"] == 2
    assert summary["history"] == str(tmp_path / "run2" / "history.json")


@needs_pipeline
def test_criteo_terabyte_script_end_to_end(tmp_path, raw_criteo):
    lines = raw_criteo.read_text().splitlines(keepends=True)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "day_0").write_text("".join(lines[:1500]))
    (raw / "day_1").write_text("".join(lines[1500:]))
    data = tmp_path / "data"
    proc = run_script(
        "criteo_terabyte.sh",
        str(raw / "day_*"),
        str(data),
        *TINY_MODEL,
        env={"RUN_DIR": str(tmp_path / "run")},
    )
    summary = summary_of(proc)
    with open(data / "metadata.json") as f:
        metadata = json.load(f)
    assert metadata["data_set"] == "terabyte"
    # The script's --max_ind_range=10000000 caps the values; the tables hold only
    # the values of the 1500 training lines (plus the out-of-vocabulary and missing ids).
    assert metadata["preprocessing"]["max_ind_range"] == 10_000_000
    assert max(metadata["table_sizes"]) <= 1500 + 2
    assert metadata["preprocessing"]["data_sub_sample_rate"] == 0.875
    assert summary["benchmark"] == "criteo_terabyte" and summary["iterations"] == 3
    assert summary["test_auc"] is not None


def test_bench_scripts_report_mistakes_in_one_line(tmp_path):
    from cli_check import assert_one_error_line, run_module

    result = run_module("bench.serving", f"--export_dir={tmp_path / 'none'}")
    assert_one_error_line(result.returncode, result.stderr, "none: no SavedModel there")
    result = run_module("bench.pipeline", "--num_rows=x")
    assert_one_error_line(result.returncode, result.stderr, "--num_rows: invalid int value: 'x'")
    result = run_module("bench.train_throughput", "--nope")
    assert_one_error_line(result.returncode, result.stderr, "Unknown command line flag 'nope'")
    flagfile = "--flagfile=" + os.path.join(ROOT, "configs", "bench.flags")
    result = run_module("bench.layer_steps", flagfile, "--arch_mlp_bot=13-512-256-64-8")
    assert_one_error_line(
        result.returncode, result.stderr, "--arch_mlp_bot=13-512-256-64-8: its last width (8)"
    )


def run_python_bench(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``bench/<script>`` run as a user runs it, on the CPU; asserts it exited 0."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", script), *args],
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# bench/train_throughput.py on a model and batch small enough for a test.
SMALL_THROUGHPUT_FLAGS = (
    "--flagfile=" + os.path.join(ROOT, "configs", "bench.flags"),
    "--arch_embedding_size=1000-50-7",
    "--arch_mlp_top=16-1",
    "--arch_mlp_bot=13-16",
    "--mini_batch_size=256",
    "--bench_warmup_steps=3",
    "--bench_steps=3",
    "--bench_cache_batches=3",
)


def test_train_throughput_profile_names_where_the_step_time_went():
    """A traced step's op time is split into the step's parts, the tables' scatter among them."""
    proc = run_python_bench(
        "train_throughput.py", *SMALL_THROUGHPUT_FLAGS, "--bench_profile_steps=2", timeout=300
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["timed_steps"] == 3
    parts = {key: value for key, value in result.items() if key.startswith("profile_ms_")}
    assert set(parts) == {
        f"profile_ms_{p}"
        for p in ("lookup", "lookup_grad", "exchange", "update", "xla", "mlp", "other")
    }
    # SGD's table updates are the fused row kernel where it is built, else XLA
    # scatters; the MLPs' matmuls are ops of their own.
    update_part = "profile_ms_update" if result["fused_kernels"] else "profile_ms_xla"
    assert parts[update_part] > 0
    assert parts["profile_ms_mlp"] > 0 and parts["profile_ms_lookup"] > 0
    assert "Op self-time per step" in proc.stdout


@pytest.mark.parametrize(
    "where, devices",
    [
        ("--devices=2", ["CPU:0", "CPU:1"]),
        pytest.param("--workers=2", ["worker 0 CPU:0", "worker 1 CPU:0"], marks=pytest.mark.slow),
    ],
)
def test_sharding_bench_compares_the_placements_bytes_and_step_times(where, devices):
    proc = run_python_bench(
        "sharding.py", where, "--bench_steps=3", "--rounds=1",
        "--flagfile=" + os.path.join(ROOT, "configs", "bench.flags"),
        "--arch_embedding_size=4000-50-3000", "--arch_mlp_top=16-1", "--arch_mlp_bot=13-16",
        "--mini_batch_size=256",
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    replicated, spread = result["device_bytes_replicated"], result["device_bytes_table_wise"]
    assert sorted(replicated) == sorted(spread) == devices
    # d=16 float32 under SGD: 64 bytes a row. Spread, the 4000-row table is alone on one
    # device and the other two share the other; replicated, each device holds all 7050.
    assert replicated[devices[0]] - spread[devices[0]] == 64 * 3050
    assert replicated[devices[1]] - spread[devices[1]] == 64 * 4000
    assert result["ms_per_step_replicated"] > 0 and result["ms_per_step_table_wise"] > 0
    if where.startswith("--workers"):
        # Worker 0's trace: only the spread tables' lookups move by collectives.
        assert result["exchange_ms_per_step_replicated"] == 0.0
        assert result["exchange_ms_per_step_table_wise"] > 0


@pytest.mark.parametrize("compare", ["onednn", "fused_kernels", "pooled_lookup"])
def test_cpu_kernels_bench_runs_both_sides_and_reports_their_ratio(compare):
    """Each round runs the training bench with the compared setting off and on (as
    the runs' own JSON says), and the ratio is that of the medians of the step times."""
    proc = run_python_bench(
        "cpu_kernels.py", f"--compare={compare}", "--rounds=1", "--", *SMALL_THROUGHPUT_FLAGS
    )
    lines = proc.stdout.strip().splitlines()
    runs = {
        line.split(":")[0]: json.loads(line.split(": ", 1)[1])
        for line in lines
        if line.startswith(f"{compare} ")
    }
    assert {name: run[compare] for name, run in runs.items()} == {
        f"{compare} off": False,
        f"{compare} on": True,
    }
    summary = json.loads(lines[-1])
    off, on = runs[f"{compare} off"]["ms_per_step"], runs[f"{compare} on"]["ms_per_step"]
    assert summary[f"ms_per_step_{compare}_off"] == [off]
    assert summary[f"ms_per_step_{compare}_on"] == [on]
    assert summary["speedup"] == round(off / on, 3)


@pytest.mark.parametrize(
    "layer, variants",
    [("embeddings", ("per_table", "pooled")), ("interaction", ("tensorflow", "fused"))],
)
def test_layer_steps_bench_times_both_variants_of_the_flagfiles_shape(tmp_path, layer, variants):
    flagfile = tmp_path / "small.flags"
    flagfile.write_text(
        "# a small multi-hot shape\n--arch_embedding_size=300-40-5\n"
        "--arch_sparse_feature_size=8\n--arch_mlp_bot=13-8\n--num_indices_per_lookup=4\n"
        "--mini_batch_size=64\n"
    )
    proc = run_python_bench(
        "layer_steps.py", f"--layer={layer}", f"--flagfile={flagfile}", "--rounds=3", "--steps=2"
    )
    assert f"{layer}, 3 tables, d=8, 4 id(s) per bag, batch 64" in proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    first, second = (result[f"ms_per_step_{name}"] for name in variants)
    assert len(first) == len(second) == 3 and min(first + second) > 0
    assert result["speedup"] == round(statistics.median(first) / statistics.median(second), 3)
