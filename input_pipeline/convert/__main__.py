"""``python -m input_pipeline.convert``: see ``input_pipeline.convert.cli``."""

from input_pipeline.tf_startup import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow's first import: its start-up lines only on request

from input_pipeline.convert.cli import run  # noqa: E402

run()
