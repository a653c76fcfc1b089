"""One recipe per paper: its config, its variants and its stages, as data (notebooks 03-08).

A recipe builds :class:`vlkit.specs.ModelSpec` / :class:`vlkit.specs.TrainSpec` /
:class:`vlkit.stages.Stage` objects and a ``plan`` of :class:`vlkit.experiment.Row` s; the core
trains, caches, evaluates and writes results. ``docs/adding_a_method.md`` shows how a new paper
plugs in.
"""
