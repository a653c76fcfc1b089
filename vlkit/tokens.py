"""The ``<image>`` placeholder that marks where an image goes in a conversation (notebook 01).

One definition for the whole package. It lives in this tiny module rather than in
:mod:`vlkit.tokenizer` because that one imports ``tokenizers`` and ``transformers``, and the
dataset writer and the benchmark formats must stay light to import.
"""

IMAGE_TOKEN = "<image>"
