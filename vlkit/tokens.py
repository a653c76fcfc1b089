"""The ``<image>`` placeholder that marks where an image goes in a conversation (notebook 01).

One definition for the whole package. It lives in this tiny module rather than in
:mod:`vlkit.tokenizer` because that one imports ``tokenizers`` and ``transformers``, and the
dataset writer and the benchmark formats must stay light to import.
"""

IMAGE_TOKEN = "<image>"


def with_image(text: str, image: bool = True) -> str:
    """``text`` as a user turn about an image: ``<image>`` on a line of its own first (LLaVA's layout),
    unless ``image`` is False or the text already has its tag."""
    return f"{IMAGE_TOKEN}\n{text}" if image and IMAGE_TOKEN not in text else text
