"""The import rules of the code base: data flows one way, flags -> configs -> parts.

Layers and the model know no flags, data files or training loop; the configs
know nothing else; ``input_pipeline`` knows no model or trainer (of ``dlrm_tf`` it
uses only the C++ kernels' builder, ``dlrm_tf.kernels``, which knows nothing of the
rest); ``export`` runs without the CLI and the trainer. Every module's docstring says its job first.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("dlrm_tf", "input_pipeline", "export")

# Module prefix -> prefixes it must never import.
FORBIDDEN = {
    "dlrm_tf.model": ("dlrm_tf.training", "dlrm_tf.reports", "dlrm_tf.main", "dlrm_tf.flags",
                      "dlrm_tf.job", "export", "input_pipeline.convert", "input_pipeline.dataset",
                      "input_pipeline.prepare"),
    "dlrm_tf.training": ("dlrm_tf.main", "dlrm_tf.flags", "dlrm_tf.job", "export"),
    "dlrm_tf.reports": ("dlrm_tf.main", "dlrm_tf.flags", "dlrm_tf.job",
                        "dlrm_tf.training.trainer"),
    "dlrm_tf.config": ("dlrm_tf.model", "dlrm_tf.training", "dlrm_tf.reports", "dlrm_tf.main",
                       "dlrm_tf.flags", "dlrm_tf.job", "input_pipeline", "export"),
    "input_pipeline": ("dlrm_tf", "export"),
    "dlrm_tf.kernels": ("dlrm_tf.model", "dlrm_tf.training", "dlrm_tf.reports", "dlrm_tf.main",
                        "dlrm_tf.flags", "dlrm_tf.job", "dlrm_tf.config", "input_pipeline",
                        "export"),
    "export": ("dlrm_tf.training", "dlrm_tf.main", "dlrm_tf.flags", "dlrm_tf.job",
               "dlrm_tf.reports"),
}  # fmt: skip
# Module prefix -> prefixes it may import although FORBIDDEN names a wider one.
ALLOWED = {
    "input_pipeline": ("dlrm_tf.kernels", "dlrm_tf.switches"),
}


def _modules():
    for package in PACKAGES:
        for directory, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    yield dotted.removesuffix(".__init__"), path


def _imports(path):
    """Every module an import statement in the file names (also inside functions)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _within(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


MODULES = sorted(_modules())


def test_the_packages_are_found():
    names = {name for name, _ in MODULES}
    assert {"dlrm_tf.main", "dlrm_tf.model.layers", "input_pipeline.criteo"} <= names


@pytest.mark.parametrize("module,path", MODULES, ids=[name for name, _ in MODULES])
def test_module_imports_follow_the_rules(module, path):
    broken = sorted(
        {
            f"{module} imports {name}"
            for prefix, forbidden in FORBIDDEN.items()
            if _within(module, prefix)
            for name in _imports(path)
            for bad in forbidden
            if _within(name, bad) and not any(_within(name, ok) for ok in ALLOWED.get(prefix, ()))
        }
    )
    assert not broken, broken


@pytest.mark.parametrize("module,path", MODULES, ids=[name for name, _ in MODULES])
def test_every_module_says_its_job_first(module, path):
    docstring = ast.get_docstring(ast.parse(open(path, encoding="utf-8").read()))
    assert docstring and docstring.strip().splitlines()[0].strip(), f"{module}: no docstring"
