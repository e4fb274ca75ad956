"""``python -m input_pipeline.convert``: see ``input_pipeline.convert.cli``."""

from input_pipeline.convert.cli import run

run()
