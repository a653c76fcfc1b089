"""Connector-side visual-token compressors of notebook 06, one method per module.

Importing the package registers them in :data:`vlkit.compression.COMPRESSORS` (which imports it on
first use): ``vmtc`` (VMTC, 2411.15453), ``visionzip``, ``prumerge`` (LLaVA-PruMerge), ``pool`` and
``random``. Each plans which tokens go where (:class:`vlkit.compressors.merge.MergePlan`) and merges
by that plan with :func:`vlkit.compressors.merge.merge`.
"""
from vlkit.compressors import pool, prumerge, random_subset, visionzip, vmtc  # noqa: F401  (registers them)
from vlkit.compressors.base import PlanCompressor
from vlkit.compressors.kmeans import spherical_kmeans
from vlkit.compressors.merge import MergePlan, merge
from vlkit.compressors.prumerge import iqr_outliers

__all__ = ["MergePlan", "PlanCompressor", "iqr_outliers", "merge", "spherical_kmeans"]
