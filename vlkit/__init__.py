"""vlkit: the helper package behind the vision-language instruction-tuning workbook.

Every notebook in ``notebooks/`` is thin: it explains, calls functions from here, and plots.
"""
from vlkit.metrics import record

__version__ = "0.1.0"
__all__ = ["record", "__version__"]
