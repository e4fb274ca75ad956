"""``python -m input_pipeline.convert``: see ``input_pipeline.convert.cli``."""

from input_pipeline.tf_startup import start_tensorflow

start_tensorflow()  # before TensorFlow's first import: oneDNN, start-up lines on request

from input_pipeline.convert.cli import run  # noqa: E402

run()
