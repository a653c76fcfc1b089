"""Benchmarks in public formats (notebook 03 onwards).

- :mod:`vlkit.benchmarks.scienceqa`: ScienceQA's format: the ``problems.json`` loader, LLaVA's
  prompts, the answer parser and the paper's accuracy columns (NAT SOC LAN TXT IMG NO G1-6
  G7-12 Avg); :mod:`vlkit.world.scienceqa` generates a benchmark in it from the world.
- :mod:`vlkit.benchmarks.llava_bench`: LLaVA-Bench-style relative score, a judge comparing a
  model's answer with the teacher's reference against the symbolic context.
- :mod:`vlkit.benchmarks.short_vqa`: a VQA-v2-format short-answer set (colour, shape, count in one
  word) generated from the world, with VQA's normalisation and accuracy (notebook 06).
"""
