"""The BPE tokenizer: special tokens, chat template loss mask, save/load (notebook 02)."""
import pytest
from transformers import AutoTokenizer

from vlkit.tokenizer import (ASSISTANT_TOKEN, IMAGE_TOKEN, SPECIAL_TOKENS, USER_TOKEN,
                             check_tokenizer, llava_to_messages, train_tokenizer)

CORPUS = ["There is a small red circle at the top left of the image.",
          "A large blue square sits next to a green triangle.",
          "What colour is the triangle? The triangle is green.",
          "Describe the image in detail."] * 20
CONV = [{"from": "human", "value": f"{IMAGE_TOKEN}\nWhat colour is the circle?"},
        {"from": "gpt", "value": "The circle is red."},
        {"from": "human", "value": "And the square?"},
        {"from": "gpt", "value": "Blue."}]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=320)


def test_vocab_size_is_a_parameter():
    assert len(train_tokenizer(CORPUS, vocab_size=300)) == 300
    assert len(train_tokenizer(CORPUS, vocab_size=340)) > 300
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CORPUS, vocab_size=100)


def test_special_tokens_are_single_ids(tok):
    for t in SPECIAL_TOKENS:
        ids = tok.encode(f"word{t}word", add_special_tokens=False)
        assert ids.count(tok.convert_tokens_to_ids(t)) == 1
    assert len({tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}) == len(SPECIAL_TOKENS)
    text = "a purple hexagon with Ünïcode"  # unseen characters round-trip (byte-level BPE)
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_chat_template_masks_only_assistant_turns(tok):
    msgs = llava_to_messages(CONV)
    out = tok.apply_chat_template(msgs, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    answer = tok.decode([i for i, m in zip(ids, mask) if m])
    assert answer == "The circle is red.</s>Blue.</s>"
    assert ids[0] == tok.bos_token_id and ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == 1
    text = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert text.startswith(f"<s>{USER_TOKEN}{IMAGE_TOKEN}") and text.endswith(ASSISTANT_TOKEN)


def test_save_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    msgs = llava_to_messages(CONV)
    a = tok.apply_chat_template(msgs, return_assistant_tokens_mask=True, return_dict=True)
    b = loaded.apply_chat_template(msgs, return_assistant_tokens_mask=True, return_dict=True)
    assert a["input_ids"] == b["input_ids"] and a["assistant_masks"] == b["assistant_masks"]
    check_tokenizer(loaded)


def test_bad_input(tok, tmp_path):
    with pytest.raises(ValueError, match="speaker"):
        llava_to_messages([{"from": "robot", "value": "hi"}])
    with pytest.raises(ValueError, match="from/value"):
        llava_to_messages([{"text": "hi"}])
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
    # A tokenizer without <image> (e.g. a plain LLM's) is refused with a clear message.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    raw = Tokenizer(models.WordLevel({"<unk>": 0, "<pad>": 1, "</s>": 2, "a": 3}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>",
                                    eos_token="</s>")
    with pytest.raises(ValueError, match="<image>"):
        check_tokenizer(plain)
