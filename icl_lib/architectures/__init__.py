"""The models the core runs: the library's blocks and PyTorch's encoder layers, and ``transformers``
causal LMs by family. Importing this package registers both architectures with the core."""

from . import causal_lm, stacks  # noqa: F401  (registration)
