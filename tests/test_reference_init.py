"""--init=reference: the reference DLRM's NumPy initial weights, and its printed numbers.

The expected numbers below were printed by the reference PyTorch DLRM
(facebookresearch/dlrm, dlrm_s_pytorch.py at its current head, torch 2.13 CPU,
NumPy 2.4) run from its checkout as
``python dlrm_s_pytorch.py --mini-batch-size=2 --data-size=6`` (the README's
sample run, which configs/tiny.flags mirrors), the same with ``--debug-mode``,
and the command above ``REFERENCE_PARTIAL_BATCH``.
"""

import os
import re

import numpy as np
import tensorflow as tf

from dlrm_tf.config import ModelConfig
from dlrm_tf.training import trainer as train
from dlrm_tf.training.data_sources import DataConfig, DataSource
from tests.test_main import ROOT, run_cli

TINY = os.path.join(ROOT, "configs", "tiny.flags")

# python dlrm_s_pytorch.py --mini-batch-size=2 --data-size=6
REFERENCE_TINY_LOSSES = ["0.025266", "0.180494", "0.083240"]
# ... --debug-mode: the weights are drawn after the printed batches, so other losses
REFERENCE_TINY_DEBUG_LOSSES = ["0.018993", "0.029700", "0.049903"]
REFERENCE_TINY_DEBUG_INITIAL = """\
[[-0.34693  0.19553]
 [-0.18123  0.19197]
 [ 0.05438 -0.11105]
 [ 0.42513  0.34167]]
[[-0.16466 -0.52702]
 [-0.22543 -0.11757]
 [ 0.23667  0.57199]]
[[-0.20377  0.3713 ]
 [ 0.13177  0.27111]]
[[-0.16825 -0.58044 -0.39152 -0.64812]
 [ 1.11561  0.0879   0.61481 -0.67743]
 [ 0.09677  0.62959 -0.17907  0.55115]]
[-0.62618 -0.7872   0.21905]
[[-0.23981  0.40607 -1.25093]
 [ 0.45048  1.64331 -0.01557]]
[0.02414 0.12696]
[[-0.76015  0.17397 -0.65541 -0.1746   0.5074  -0.30015  0.20463  0.41345]
 [ 0.1138  -0.55969 -0.13573  0.79993 -0.82672 -0.11259 -0.2254   0.04929]
 [ 0.30546  0.65675 -0.11032  0.33164  0.20402  0.19365 -0.23022 -0.40715]
 [-0.44909 -0.30881  0.13133  0.31066  0.13206 -0.22411  0.73728  0.62007]]
[-0.177   -0.41172  0.06511  0.63365]
[[ 0.19212  0.32132 -0.12244  0.26343]
 [ 0.89174 -0.13837  0.08274  0.14654]]
[ 0.20062 -0.99836]
[[-1.53246 -0.83254]]
[0.16794]
"""
REFERENCE_TINY_DEBUG_UPDATED = """\
[[-0.34698  0.19556]
 [-0.18126  0.19205]
 [ 0.05439 -0.11103]
 [ 0.4251   0.34159]]
[[-0.16464 -0.52695]
 [-0.2255  -0.11758]
 [ 0.23668  0.57204]]
[[-0.20388  0.37132]
 [ 0.13175  0.27098]]
[[-0.16825 -0.58044 -0.39152 -0.64812]
 [ 1.11518  0.08764  0.61439 -0.67776]
 [ 0.09677  0.62959 -0.17907  0.55116]]
[-0.62618 -0.78773  0.21905]
[[-0.23981  0.40607 -1.25093]
 [ 0.45048  1.64324 -0.01563]]
[0.02414 0.1269 ]
[[-0.76015  0.17397 -0.65541 -0.1746   0.5074  -0.30015  0.20463  0.41345]
 [ 0.1138  -0.55969 -0.13573  0.79993 -0.82672 -0.11259 -0.2254   0.04929]
 [ 0.30546  0.65666 -0.11032  0.33164  0.20399  0.19363 -0.23022 -0.40716]
 [-0.44909 -0.30864  0.13133  0.31065  0.13211 -0.22405  0.73728  0.62009]]
[-0.177   -0.41172  0.06508  0.63371]
[[ 0.19212  0.32132 -0.12192  0.26336]
 [ 0.89174 -0.13837  0.08274  0.14654]]
[ 0.20084 -0.99836]
[[-1.53243 -0.83254]]
[0.1678]
"""

LOSS = re.compile(r"^Finished training it \d+/\d+ of epoch \d+, -1\.00 ms/it, loss (\d\.\d{6}),")


def printed_losses(stdout: str) -> list[str]:
    return [m[1] for m in map(LOSS.match, stdout.splitlines()) if m]


def oracle_initial_weights(cfg: ModelConfig, seed: int) -> list[np.ndarray]:
    """The reference's draws, written out from its create_emb / create_mlp."""
    rng = np.random.RandomState(seed)
    out = []
    for n in cfg.table_sizes:
        out.append(
            rng.uniform(-np.sqrt(1 / n), np.sqrt(1 / n), (n, cfg.embedding_dim)).astype(np.float32)
        )
    for widths in (cfg.bottom_mlp, (cfg.interaction_width, *cfg.top_mlp)):
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            w = rng.normal(0.0, np.sqrt(2 / (fan_in + fan_out)), (fan_out, fan_in))
            out.append(w.astype(np.float32).T)  # Keras keeps [in, out]
            out.append(rng.normal(0.0, np.sqrt(1 / fan_out), fan_out).astype(np.float32))
    return out


def keras_weights_in_reference_order(model) -> list[np.ndarray]:
    weights = [t.numpy() for t in model.embeddings.tables]
    for mlp in (model.bottom_mlp, model.top_mlp):
        for layer in mlp.dense_layers:
            weights += [layer.kernel.numpy(), layer.bias.numpy()]
    return weights


def run_without_learning(tmp_path, init: str, debug_mode: bool = False):
    """A run whose learning rate is 0: its model keeps the initial weights."""
    cfg = ModelConfig(
        embedding_dim=3, table_sizes=(5, 7, 3), bottom_mlp=(4, 6, 3), top_mlp=(5, 2, 1)
    )
    data = DataConfig(generation="random", data_size=4, seed=42)
    source = DataSource(data, cfg.table_sizes, cfg.num_dense)
    config = train.TrainConfig(
        mini_batch_size=2,
        learning_rate=0.0,
        seed=42,
        init=init,
        plot=False,
        run_dir=str(tmp_path / "run"),
        debug_mode=debug_mode,
    )
    result = train.run(cfg, config, source, tf.distribute.get_strategy(), log=lambda s: None)
    return cfg, keras_weights_in_reference_order(result.model)


def test_reference_init_draws_the_reference_order(tmp_path):
    cfg, weights = run_without_learning(tmp_path, "reference")
    expected = oracle_initial_weights(cfg, 42)
    assert [w.shape for w in weights] == [e.shape for e in expected]
    for got, want in zip(weights, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_keras_init_stays_the_default(tmp_path):
    cfg, weights = run_without_learning(tmp_path, "keras")
    expected = oracle_initial_weights(cfg, 42)
    assert train.TrainConfig().init == "keras"
    assert not any(np.array_equal(g, w) for g, w in zip(weights, expected, strict=True))


def test_tiny_run_prints_the_reference_losses():
    proc = run_cli(f"--flagfile={TINY}", "--init=reference", "--plot=false", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert printed_losses(proc.stdout) == REFERENCE_TINY_LOSSES


def test_tiny_debug_run_prints_the_reference_parameters_and_losses(tmp_path):
    proc = run_cli(
        f"--flagfile={TINY}",
        "--init=reference",
        "--debug_mode",
        "--plot=false",
        f"--run_dir={tmp_path}/run",
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    initial = out[out.index("initial parameters (weights and bias):\n") :].split("\n", 1)[1]
    assert initial.startswith(REFERENCE_TINY_DEBUG_INITIAL)
    assert printed_losses(out) == REFERENCE_TINY_DEBUG_LOSSES
    updated = out[out.index("updated parameters (weights and bias):\n") :].split("\n", 1)[1]
    assert updated.startswith(REFERENCE_TINY_DEBUG_UPDATED)


# python dlrm_s_pytorch.py --mini-batch-size=4 --data-size=30 --arch-embedding-size=10-20-30
#     --arch-sparse-feature-size=4 --arch-mlp-bot=5-8-4 --arch-mlp-top=8-1
#     --loss-function=bce --learning-rate=0.1 --numpy-rand-seed=7 --print-freq=2
# (30 examples: seven batches of 4, then one of 2)
REFERENCE_PARTIAL_BATCH = ["0.645584", "0.751699", "0.821828", "0.730871"]


def test_partial_last_batch_run_prints_the_reference_losses(tmp_path):
    proc = run_cli(
        "--mini_batch_size=4",
        "--data_size=30",
        "--arch_embedding_size=10-20-30",
        "--arch_sparse_feature_size=4",
        "--arch_mlp_bot=5-8-4",
        "--arch_mlp_top=8-1",
        "--loss_function=bce",
        "--learning_rate=0.1",
        "--numpy_rand_seed=7",
        "--print_freq=2",
        "--init=reference",
        "--plot=false",
        f"--run_dir={tmp_path}/run",
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert printed_losses(proc.stdout) == REFERENCE_PARTIAL_BATCH
    assert "8 steps (1 epoch(s) of 8 steps), 30 examples" in proc.stdout
