"""Visual-token compressors by name (notebook 06); importing this package registers them.

:func:`vlkit.compression.build_compressor` imports it, so a name works without importing anything.
Methods that act outside the connector: ``tome`` (merging in the vision tower), ``fastv`` (pruning
in the LLM).
"""
from vlkit.compressors import fastv, tome  # noqa: F401
