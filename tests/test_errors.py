"""Tests of the one-line error reports (input_pipeline/errors.py)."""

import errno

import pytest
import tensorflow as tf

from input_pipeline import errors


def report(error, capsys, argv=("prog",)):
    assert errors.report(error, list(argv)) == 2
    return capsys.readouterr().err


def test_full_disk_says_so_in_one_line(capsys):
    err = report(OSError(errno.ENOSPC, "No space left on device", "/data/out.tmp"), capsys)
    assert err == (
        "error: [Errno 28] No space left on device: '/data/out.tmp': the disk is full; "
        "free space or write elsewhere (nothing was replaced)\n"
    )


def test_tensorflow_assertion_becomes_one_line_without_graph_noise(capsys):
    @tf.function
    def check(x):
        tf.debugging.Assert(x > 0, ["Corrupt or truncated shard", "/d/train-0.tfrecord"])
        return x

    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        check(tf.constant(-1))
    err = report(caught.value, capsys)
    assert err.count("\n") == 1 and err.startswith("error: assertion failed: ")
    assert "[Corrupt or truncated shard] [/d/train-0.tfrecord]" in err
    assert "{{node" not in err and "Traceback" not in err
    assert "InvalidArgumentError; rerun with --verbose for the traceback" in err


def test_verbose_adds_the_traceback(capsys):
    try:
        raise KeyError("config.json")
    except KeyError as error:
        err = report(error, capsys, argv=("prog", "--verbose"))
    assert "Traceback" in err and err.splitlines()[-1] == "error: missing entry 'config.json'"


def test_config_fields_in_a_message_are_shown_as_flags(capsys):
    """Library messages name config fields as `field`; a command line shows its flags."""
    error = ValueError("`embedding_dim`=3 must equal `bottom_mlp`'s last width; see `use_gpu`")
    assert errors.report(error, ["prog"], flag_names={"embedding_dim": "d", "bottom_mlp": "mlp"})
    assert capsys.readouterr().err == (
        "error: --d=3 must equal --mlp's last width; see --use_gpu\n"
    )
    assert str(error).startswith("`embedding_dim`=3")  # the library's own text names the field
