"""The code base is ruff clean (settings in pyproject.toml) and defines each concept once."""

import ast
import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_check_is_clean():
    ruff = shutil.which("ruff")
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    try:
        proc = subprocess.run([*cmd, "check", "."], cwd=ROOT, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    assert proc.returncode == 0, proc.stdout[-4000:]



def _library_nodes():
    """(place, AST node) of every node in the packages' and benches' Python files."""
    for package in ("dlrm_tf", "input_pipeline", "export", "bench"):
        for path in sorted(glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)):
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if hasattr(node, "lineno"):
                    yield f"{os.path.relpath(path, ROOT)}:{node.lineno}", node


def _literal(node: ast.AST):
    if not isinstance(node, (ast.Tuple, ast.List, ast.Dict)):
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:  # not made of literals only
        return None


def _assigns(name: str):
    return lambda n: isinstance(n, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == name for t in n.targets
    )


def _names_every(*names: str):
    """A list of the names, or a table of them with counts (a table of a setting or
    a description per name, such as a bench's learning rates, uses the names)."""

    def predicate(node: ast.AST) -> bool:
        value = _literal(node)
        if isinstance(value, dict) and not all(isinstance(v, int) for v in value.values()):
            return False
        return set(names) <= {v for v in value or () if isinstance(v, str)}

    return predicate


def _lists_kaggle_cardinalities(node: ast.AST) -> bool:
    value = _literal(node)
    return isinstance(value, (tuple, list)) and tuple(value[:3]) == (1460, 583, 10131227)


CONCEPTS = {
    "dense feature key": _assigns("DENSE_KEY"),
    "sparse feature key": _assigns("SPARSE_KEY"),
    ".keras loader": lambda n: isinstance(n, ast.Call)
    and ast.unparse(n.func) == "keras.saving.load_model",
    "ROC AUC": lambda n: isinstance(n, ast.FunctionDef) and n.name in ("auc", "roc_auc"),
    "optimizer names": _names_every("sgd", "adagrad", "adam"),
    "loss names": _names_every("mse", "bce", "wbce"),
    "Kaggle cardinalities": _lists_kaggle_cardinalities,
}


@pytest.mark.parametrize("concept", CONCEPTS)
def test_each_concept_is_defined_once(concept):
    places = [place for place, node in _library_nodes() if CONCEPTS[concept](node)]
    assert len(places) == 1, f"the {concept} stands at {places}"
