"""The flags and their configs (dlrm_tf/flags.py): every field a library error names
is shown as a flag the user can give."""

import ast
import glob
import os
import re

from absl import flags

from dlrm_tf import flags as dlrm_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELD = re.compile(r"(?<!`)`([a-z][a-z0-9_]*)`(?!`)")
# Settings of the converter's, the exporter's and `tfds build`'s own command lines.
OTHER_CLI_FLAGS = {
    "output_dir",
    "bad_lines",
    "overwrite",
    "version",
    "frequency_threshold",
    "categorical",
    "manual_dir",
}


def message_fields() -> dict[str, set[str]]:
    """`field` names in the string literals (not docstrings) of the library modules."""
    found: dict[str, set[str]] = {}
    packages = ("dlrm_tf", "input_pipeline", "export")
    paths = (p for d in packages for p in glob.glob(f"{ROOT}/{d}/**/*.py", recursive=True))
    for path in sorted(paths):
        tree = ast.parse(open(path, encoding="utf-8").read())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docstrings:
                    for name in FIELD.findall(node.value):
                        found.setdefault(name, set()).add(os.path.relpath(path, ROOT))
    return found


def test_every_field_a_message_names_is_a_flag():
    defined = set(flags.FLAGS)
    fields = message_fields()
    assert {"embedding_dim", "output_dir", "load_model"} <= set(fields)  # the scan sees them
    unknown = {
        name: sorted(paths)
        for name, paths in fields.items()
        if dlrm_flags.FIELD_FLAGS.get(name, name) not in defined | OTHER_CLI_FLAGS
    }
    assert unknown == {}


def test_the_field_table_names_defined_flags():
    assert set(dlrm_flags.FIELD_FLAGS.values()) <= set(flags.FLAGS)
