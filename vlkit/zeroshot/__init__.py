"""Zero-shot tasks held out from training, each in a public-like format with its own scorer (notebook 05).

VisLingInstruct (2402.07398) reports zero-shot gains on TextVQA, HatefulMemes and others. Each task
here is generated from the world's scenes at a seed of its own, so no question of it is in any
training set:

- :mod:`vlkit.zeroshot.pope`: POPE-like object existence ("Is there a blue circle?"): accuracy, F1;
- :mod:`vlkit.zeroshot.memes`: HatefulMemes-like "does the caption fit the image?": AUROC, accuracy;
- :mod:`vlkit.zeroshot.textvqa`: TextVQA-like "what is written on the red square?": VQA accuracy,
  with :mod:`vlkit.zeroshot.readability`, the probe that says whether the tower can read at all.

Each has questions with ``fields`` that fill a pool of >= 16 phrasings (the first is the training
data's own phrasing where it has one), answers scored by likelihood (:mod:`vlkit.zeroshot.scoring`)
and a chance baseline.
"""
