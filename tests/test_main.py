"""The CLI: the reference's tiny run end to end, and clear errors for bad flags."""

import glob
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from dlrm_tf import main as main_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_LINE = re.compile(
    r"^Finished training it (\d+)/(\d+) of epoch (\d+), (-?\d+\.\d\d) ms/it, "
    r"loss (\d+\.\d{6}), accuracy (\d+\.\d{3}) %$"
)


def run_cli(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, "-m", "dlrm_tf.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_tiny_reference_run(tiny_run):
    run_dir, proc = tiny_run
    lines = [m for m in map(TRAIN_LINE.match, proc.stdout.splitlines()) if m]
    assert [(m[1], m[2], m[3]) for m in lines] == [
        ("1", "3", "0"),
        ("2", "3", "0"),
        ("3", "3", "0"),
    ]
    for m in lines:
        assert float(m[4]) > 0  # --print_time gives real ms/it
        assert float(m[6]) == 0.0  # random targets in [0, 1): never equal to a rounded p
        assert 0.0 < float(m[5]) < 1.0  # mse of probabilities against [0, 1) targets
    assert os.path.exists(run_dir / "history.json")


def test_debug_mode_shows_the_reference_first_batch(tiny_run):
    """The reference's sample run (seed 123) draws this first batch; so must we."""
    out = tiny_run[1].stdout
    assert "[8 4 2 1]" in out and "[4 3 2]" in out
    first = out[out.index("mini-batch: 0") : out.index("mini-batch: 1")]
    assert "[[0.69647 0.28614 0.22685 0.55131]\n [0.71947 0.42311 0.98076 0.68483]]" in first
    assert "[[[1], [0, 1]], [[0], [1]], [[1], [0]]]" in first
    assert "initial parameters (weights and bias):" in out


def test_tiny_run_is_deterministic_for_a_seed(tmp_path):
    flagfile = os.path.join(ROOT, "configs", "tiny.flags")
    outs = []
    for i in range(2):
        proc = run_cli(
            f"--flagfile={flagfile}",
            f"--run_dir={tmp_path}/r{i}",
            "--nepochs=2",
            "--optimizer=adagrad",
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append([ln for ln in proc.stdout.splitlines() if ln.startswith("Finished")])
    assert len(outs[0]) == 6
    assert outs[0] == outs[1]


def test_trace_driven_synthetic_run(tmp_path):
    proc = run_cli(
        f"--flagfile={os.path.join(ROOT, 'configs', 'tiny.flags')}",
        "--data_generation=synthetic",
        f"--data_trace_file={os.path.join(ROOT, 'input', 'dist_emb_j.log')}",
        "--num_indices_per_lookup=3",
        f"--run_dir={tmp_path}/run",
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([ln for ln in proc.stdout.splitlines() if TRAIN_LINE.match(ln)]) == 3


@pytest.fixture
def cli(capsys, tmp_path):
    """Runs main() in-process with the given flags; returns (exit code, stderr)."""

    def invoke(*args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["dlrm", f"--run_dir={tmp_path}/run", *args])
        code = main_module.main([])
        return code, capsys.readouterr().err

    yield invoke
    flags.FLAGS.unparse_flags()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--arch_mlp_bot=4-3-5"],
            r"--arch_mlp_bot=4-3-5: its last width \(5\) must equal "
            r"--arch_sparse_feature_size \(2\)",
        ),
        (["--arch_embedding_size=4-x-2"], r"--arch_embedding_size='4-x-2'.*'x' is not"),
        (["--arch_embedding_size=4--2"], r"--arch_embedding_size"),
        (["--arch_mlp_top=4-2-3"], r"--arch_mlp_top=4-2-3: the last layer must have width 1"),
        (["--processed_data_dir=/tmp/x"], r"add --data_generation=dataset"),
        (["--data_generation=dataset"], r"needs --processed_data_dir"),
        (["--inference_only"], r"--inference_only needs --load_model"),
        (["--save_model=model.h5"], r"must end in .keras"),
        (["--loss_weights=1-2-3"], r"--loss_weights='1-2-3'"),
        (["--mini_batch_size=0"], r"--mini_batch_size=0: must be a positive integer"),
        (["--num_batches=-5"], r"--num_batches=-5: must be >= 0 \(0 = all the data\)"),
        (["--use_gpu"], r"--use_gpu: no GPU is visible"),
        (
            ["--arch_embedding_size=4000000000-3-2"],
            r"does not fit in host memory: .* GiB available",
        ),
        (["--num_gpus=2"], r"--num_gpus=2 needs --use_gpu"),
        (["--distribution_strategy=multi_worker_mirrored"], r"needs the TF_CONFIG"),
        (
            ["--lr_num_warmup_steps=10", "--lr_decay_start_step=5", "--lr_num_decay_steps=3"],
            r"--lr_decay_start_step=5 must not come before",
        ),
    ],
)
def test_bad_flags_give_clear_errors(cli, args, message):
    os.environ.pop("TF_CONFIG", None)
    code, err = cli(*args)
    assert code == 2
    assert re.search(message, err), err


def test_boolean_flags_parse_false_as_false(cli):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["dlrm", "--arch_interaction_itself=false", "--round_targets=False"])
    assert flags.FLAGS.arch_interaction_itself is False
    assert flags.FLAGS.round_targets is False


def test_natural_mistakes_end_in_one_error_line(tmp_path):
    """Run as a user runs it: a file that is not a model, ids out of range in a
    shard, an unknown flag; each ends in one ``error:`` line and status 2."""
    import json

    from cli_check import assert_one_error_line, run_module

    from input_pipeline import convert
    from input_pipeline import planted_signal as synthetic

    notes = tmp_path / "notes.keras"
    notes.write_text("not a model")
    raw = tmp_path / "train.txt"
    synthetic.write_text(str(raw), num_rows=300, seed=1)
    data = tmp_path / "data"
    convert.convert("kaggle", raw, data, max_ind_range=50, categorical="hash", num_shards=1)
    metadata = json.loads((data / "metadata.json").read_text())
    metadata["table_sizes"][4] = 3  # the shards hold ids up to 49 in table 4
    (data / "metadata.json").write_text(json.dumps(metadata))
    dataset_flags = [
        "--data_generation=dataset", f"--processed_data_dir={data}", "--mini_batch_size=64",
        "--arch_sparse_feature_size=2", "--arch_mlp_bot=13-2", "--arch_mlp_top=4-1", "--plot=false",
    ]  # fmt: skip
    cases = [
        ([f"--load_model={notes}", "--inference_only"], "not a .keras model file"),
        (dataset_flags, "Ids out of range of table_sizes in shard"),
        (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    ]
    lines = []
    for args, message in cases:
        result = run_module("dlrm_tf.main", *args, f"--run_dir={tmp_path}/run", cwd=tmp_path)
        lines.append(assert_one_error_line(result.returncode, result.stderr, message))
    assert lines[1].startswith("error: assertion failed: [Ids out of range of table_sizes")


# --- the reference's one command: convert the raw file once, then train -----------------

ONE_COMMAND_MODEL = [
    "--arch_sparse_feature_size=4",
    "--arch_mlp_bot=13-4",
    "--arch_mlp_top=4-1",
    "--loss_function=bce",
    "--mini_batch_size=64",
    "--num_batches=2",
    "--test_num_batches=1",
    "--plot=false",
]


@pytest.fixture(scope="module")
def kaggle_text(tmp_path_factory):
    """A small Kaggle-shaped train.txt (planted-signal Criteo text)."""
    from input_pipeline import planted_signal as synthetic

    path = tmp_path_factory.mktemp("raw") / "train.txt"
    synthetic.write_text(str(path), num_rows=1400, seed=3)
    return path


def one_command(raw, data, *extra):
    return [
        "--data_generation=dataset",
        "--data_set=kaggle",
        f"--raw_data_file={raw}",
        f"--processed_data_dir={data}",
        *ONE_COMMAND_MODEL,
        *extra,
    ]


def test_one_command_converts_the_raw_file_then_trains_and_reuses_it(tmp_path, kaggle_text):
    import json

    data = tmp_path / "data"
    args = one_command(kaggle_text, data)
    first = run_cli(*args, f"--run_dir={tmp_path}/r1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Converting" in first.stdout
    assert len([ln for ln in first.stdout.splitlines() if TRAIN_LINE.match(ln)]) == 2
    metadata = json.loads((data / "metadata.json").read_text())
    with open(kaggle_text, "rb") as f:
        lines = sum(1 for _ in f)
    assert sum(metadata["rows"].values()) == lines  # every line of the file, once
    assert [s["path"] for s in metadata["sources"]] == [str(kaggle_text)]
    converted_at = os.path.getmtime(data / "metadata.json")

    second = run_cli(*args, f"--run_dir={tmp_path}/r2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Converting" not in second.stdout
    assert os.path.getmtime(data / "metadata.json") == converted_at
    assert len([ln for ln in second.stdout.splitlines() if TRAIN_LINE.match(ln)]) == 2


@pytest.fixture(scope="module")
def converted_kaggle(tmp_path_factory, kaggle_text):
    """``kaggle_text`` converted with the converter's defaults (as the one command does)."""
    from input_pipeline import convert

    data = tmp_path_factory.mktemp("converted") / "data"
    convert.convert("kaggle", kaggle_text, data)
    return data


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data_set=terabyte"], "--data_set=kaggle, not --data_set=terabyte"),
        (["--data_randomize=none"], "--data_randomize=total, not --data_randomize=none"),
        (["--data_sub_sample_rate=0.5"], "--data_sub_sample_rate=0.0, not --data_sub_sample_rate"),
        (["--max_ind_range=1000"], "--max_ind_range=0, not --max_ind_range=1000"),
    ],
)
def test_one_command_refuses_data_converted_otherwise(
    cli, converted_kaggle, kaggle_text, extra, message
):
    before = sorted(os.listdir(converted_kaggle))
    code, err = cli(*one_command(kaggle_text, converted_kaggle, *extra))
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"error: --processed_data_dir={converted_kaggle} holds data")
    assert message in lines[-1] and "remove that directory" in lines[-1], lines[-1]
    assert sorted(os.listdir(converted_kaggle)) == before  # nothing replaced


def test_one_command_refuses_data_converted_from_another_file(cli, converted_kaggle, tmp_path):
    other = tmp_path / "train.txt"
    other.write_text("another file\n")
    code, err = cli(*one_command(other, converted_kaggle))
    assert code == 2
    assert f"not from --raw_data_file={other}" in err.strip().splitlines()[-1]


def test_converter_errors_name_the_trainers_flags(cli, tmp_path, kaggle_text):
    """The converter's `output_dir` is the trainer's --processed_data_dir."""
    data = tmp_path / "notes"
    data.mkdir()
    (data / "mine.txt").write_text("not converted data")
    code, err = cli(*one_command(kaggle_text, data))
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: --processed_data_dir={data} is not a dataset written by")
    assert "choose another --processed_data_dir" in line
    assert (data / "mine.txt").read_text() == "not converted data"


def test_conversion_flags_are_checked_against_existing_data_without_a_raw_file(
    cli, converted_kaggle
):
    base = ["--data_generation=dataset", f"--processed_data_dir={converted_kaggle}"]
    code, err = cli(*base, "--data_set=terabyte")
    assert code == 2 and "--data_set=kaggle, not --data_set=terabyte" in err


@pytest.mark.parametrize(
    "flag", ["--data_set=kaggle", "--raw_data_file=train.txt", "--data_randomize=day",
             "--data_sub_sample_rate=0.5", "--max_ind_range=1000"],
)  # fmt: skip
def test_conversion_flags_with_generated_data_are_errors(cli, flag):
    code, err = cli(flag)  # --data_generation=random (the default)
    assert code == 2
    name = flag.split("=")[0]
    assert f"{name} describes Criteo data and --data_generation=random" in err, err


def test_a_sub_sample_rate_out_of_range_is_an_error(cli, tmp_path, kaggle_text):
    code, err = cli(*one_command(kaggle_text, tmp_path / "d", "--data_sub_sample_rate=1.5"))
    assert code == 2
    assert "error: --data_sub_sample_rate=1.5: must be in [0, 1)" in err
    assert not os.path.exists(tmp_path / "d")


def test_one_command_shuffles_and_sub_samples_as_the_converter_does(cli, tmp_path, kaggle_text):
    """--data_randomize and --data_sub_sample_rate reach the conversion: the data
    equals the converter's with the same settings, and the rows add up."""
    import json

    from input_pipeline import convert

    data = tmp_path / "data"
    extra = ["--data_randomize=day", "--data_sub_sample_rate=0.5", "--numpy_rand_seed=7"]
    code, err = cli(*one_command(kaggle_text, data, *extra))
    assert code == 0, err
    reference = convert.convert(
        "kaggle", kaggle_text, tmp_path / "ref", data_randomize="day", data_sub_sample_rate=0.5,
        seed=7,
    )  # fmt: skip
    for shard in (s["file"] for split in reference["shards"].values() for s in split):
        assert (data / shard).read_bytes() == (tmp_path / "ref" / shard).read_bytes(), shard
    rows = json.loads((data / "metadata.json").read_text())["rows"]
    labels = [line.split("\t", 1)[0] for line in kaggle_text.read_text().splitlines()]
    # 1400 lines = 7 days of 200; the last day is halved into test and validation.
    assert rows["test"] == rows["validation"] == 100  # only training rows are dropped
    train = labels[:1200]
    negatives, positives = train.count("0"), train.count("1")
    assert positives + 0.35 * negatives < rows["train"] < positives + 0.65 * negatives


def test_help_lists_the_programs_own_flags_and_leaves_the_rest_to_helpfull():
    short = run_cli("--help", cwd=ROOT)
    full = run_cli("--helpfull", cwd=ROOT)
    ours = set(re.findall(r"^  --(?:\[no\])?(\w+)", short.stdout, re.M))
    everything = set(re.findall(r"^  --(?:\[no\])?(\w+)", full.stdout, re.M))
    project = {f.name for f in flags.FLAGS.get_flags_for_module("dlrm_tf.flags")}
    assert ours == project, sorted(ours ^ project)
    # TensorFlow's and absl's own flags only with --helpfull.
    assert {"logtostderr", "op_conversion_fallback_to_while_loop"} <= everything - ours


def run_in_process(capsys, *args):
    """main() in-process with the given flags; returns (exit code, stdout, stderr)."""
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["dlrm", *args])
        code = main_module.main([])
    finally:
        flags.FLAGS.unparse_flags()
    out = capsys.readouterr()
    return code, out.out, out.err


def planned_sizes(stdout):
    """The checkpoint and export sizes the run's memory plan printed, in bytes."""
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("Memory plan: ")]
    units = {"MiB": 2**20, "GiB": 2**30}
    sizes = re.findall(r"(?:backup\)|\(--export_dir\)) (\d+\.\d+) (MiB|GiB)", line)
    return [float(value) * units[unit] for value, unit in sizes]


def tree_bytes(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def test_run_prints_a_memory_plan_its_files_fit(capsys, tmp_path):
    """What a run writes (best model, each backup, the export) fits the plan it printed."""
    flagfile = os.path.join(ROOT, "configs", "tiny.flags")
    code, out, err = run_in_process(
        capsys, f"--flagfile={flagfile}", f"--run_dir={tmp_path}/run", "--optimizer=adagrad",
        "--arch_embedding_size=40000-30000-20000", "--test_freq=3",
        f"--save_model={tmp_path}/best.keras", f"--backup_dir={tmp_path}/backup",
        "--backup_every=1", f"--export_dir={tmp_path}/export", "--plot=false",
    )  # fmt: skip
    assert code == 0, err
    assert "tables 90,000 rows x 2 = 0.7 MiB, their adagrad slots 0.7 MiB" in out
    checkpoint, export = planned_sizes(out)
    backups = glob.glob(f"{tmp_path}/backup/ckpt-*.data-*")
    assert backups
    for backup in backups:
        assert os.path.getsize(backup) < checkpoint
    assert os.path.getsize(tmp_path / "best.keras") < checkpoint
    assert tree_bytes(tmp_path / "export" / "1") < export


def test_too_little_disk_space_refuses_to_start(capsys, tmp_path, monkeypatch):
    from dlrm_tf.training import memory

    monkeypatch.setattr(memory, "free_bytes", lambda path: 100_000)
    flagfile = os.path.join(ROOT, "configs", "tiny.flags")
    target = tmp_path / "models" / "best.keras"
    code, out, err = run_in_process(
        capsys, f"--flagfile={flagfile}", f"--run_dir={tmp_path}/run", f"--save_model={target}",
    )  # fmt: skip
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: --save_model={target}: its file system (at {tmp_path})")
    assert "has 0.1 MiB free, the run will write 1.0 MiB there" in line
    assert "Memory plan: " in out and "Finished training" not in out
    assert sorted(os.listdir(tmp_path)) == []
