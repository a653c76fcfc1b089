"""Visual-token compressors of notebook 06 by name, one method per module; importing this package registers them.

:mod:`vlkit.compression` imports it on first use of its registry (:func:`~vlkit.compression.build_compressor`,
:func:`~vlkit.compression.available_compressors`), so a name works without importing anything.

- Connector-side (between the connector and the LLM): ``vmtc`` (VMTC, 2411.15453), ``visionzip``,
  ``prumerge`` (LLaVA-PruMerge), ``pool`` and ``random``. Each plans which tokens go where
  (:class:`vlkit.compressors.merge.MergePlan`) and merges by that plan with
  :func:`vlkit.compressors.merge.merge`.
- Acting elsewhere, through ``attach`` / ``detach``: ``tome`` (merging in the vision tower), ``fastv``
  (pruning in the LLM).
"""
# importing the modules registers them
from vlkit.compressors import fastv, pool, prumerge, random_subset, tome, visionzip, vmtc  # noqa: F401
from vlkit.compressors.base import PlanCompressor
from vlkit.compressors.kmeans import spherical_kmeans
from vlkit.compressors.merge import MergePlan, merge
from vlkit.compressors.prumerge import iqr_outliers

__all__ = ["MergePlan", "PlanCompressor", "iqr_outliers", "merge", "spherical_kmeans"]
