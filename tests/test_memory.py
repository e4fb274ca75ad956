"""The up-front memory check: parameter arithmetic and the failure message."""

import pytest

from dlrm_tf.config import ModelConfig
from dlrm_tf.memory import ModelTooLargeError, check_memory, parameter_counts, required_bytes
from input_pipeline.criteo import KAGGLE_CARDINALITIES

KAGGLE = KAGGLE_CARDINALITIES  # its values are pinned in test_criteo.py


def kaggle_config(d=16):
    return ModelConfig(
        embedding_dim=d, table_sizes=KAGGLE, bottom_mlp=(13, 512, 256, 64, d), top_mlp=(512, 256, 1)
    )


def test_parameter_counts_by_hand():
    cfg = ModelConfig(
        embedding_dim=2, table_sizes=(4, 3, 2), bottom_mlp=(4, 3, 2), top_mlp=(4, 2, 1)
    )
    embedding, mlp = parameter_counts(cfg)
    assert embedding == 9 * 2
    # bottom 4->3->2, top 8->4->2->1 (8 = 2 + 6 dot pairs)
    assert mlp == (4 * 3 + 3) + (3 * 2 + 2) + (8 * 4 + 4) + (4 * 2 + 2) + (2 * 1 + 1)
    assert required_bytes(cfg, "sgd") == (18 + mlp) * 4
    assert required_bytes(cfg, "adam", replicas_per_host=2) == (18 + mlp) * 4 * 3 * 2


def test_kaggle_tables_are_33_8m_rows():
    embedding, _ = parameter_counts(kaggle_config())
    assert embedding == 33_762_577 * 16


def test_too_large_fails_early_with_the_arithmetic():
    cfg = kaggle_config(d=128)
    with pytest.raises(ModelTooLargeError) as err:
        check_memory(cfg, "adagrad", available_bytes=8 * 2**30)
    message = str(err.value)
    assert "33,762,577 rows x 128" in message
    assert "1 weight + 1 adagrad slots" in message
    assert "8.00 GiB available" in message
    assert check_memory(kaggle_config(), "sgd", available_bytes=64 * 2**30) == required_bytes(
        kaggle_config(), "sgd"
    )
