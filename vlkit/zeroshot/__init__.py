"""Zero-shot tasks held out from training, each in a public-like format with its own scorer (notebook 05).

VisLingInstruct (2402.07398) reports zero-shot gains on TextVQA, HatefulMemes and others. Each task
here is generated from the world's scenes at a seed of its own, so no question of it is in any
training set:

- :mod:`vlkit.zeroshot.pope`: POPE-like object existence ("Is there a blue circle?"): accuracy, F1;
- further tasks follow the same shape: questions with ``fields`` that fill a pool of >= 16
  phrasings (the first is the training data's own phrasing where it has one), candidate answers
  scored by likelihood, and a chance baseline.
"""
