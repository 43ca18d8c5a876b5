"""gradpool's Python package.

``gradpool.segment`` is the segment contract of a container job, used by
the training script inside its image; ``gradpool.safetensors`` reads and
writes checkpoints without third-party packages.
"""

__version__ = "0.1.0"
