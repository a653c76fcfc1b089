"""Sub-commands of the ``vlkit`` command line; see :mod:`vlkit.cli`."""
