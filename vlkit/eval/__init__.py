"""Evaluation of any trained VLM: scoring, ScienceQA answering and baselines, LLaVA-Bench-style
questions, efficiency, the cached common suite and its tables (notebooks 03-08)."""
