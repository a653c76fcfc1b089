"""Benchmarks in public formats (notebook 03 onwards).

- :mod:`vlkit.benchmarks.scienceqa`: a ScienceQA-format multiple-choice benchmark generated
  from the world, ScienceQA's ``problems.json`` loader, answer parser and the paper's
  accuracy columns (NAT SOC LAN TXT IMG NO G1-6 G7-12 Avg).
- :mod:`vlkit.benchmarks.llava_bench`: LLaVA-Bench-style relative score, a judge comparing a
  model's answer with the teacher's reference against the symbolic context.
"""
