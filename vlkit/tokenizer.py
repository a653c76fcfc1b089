"""A BPE tokenizer for the workbook's corpus, with image and chat-role tokens (notebook 02).

The tokenizer is trained with the `tokenizers` library and wrapped as a transformers
``PreTrainedTokenizerFast``, so ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` work
exactly as for a downloaded checkpoint. Its chat template marks assistant turns with
``{% generation %}`` blocks: ``apply_chat_template(..., return_assistant_tokens_mask=True,
return_dict=True)`` then returns the mask of tokens the loss is computed on (LLaVA trains only
on the assistant's answers).
"""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vlkit.tokens import IMAGE_TOKEN

USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN = "<s>", "</s>", "<pad>", "<unk>"
# Order fixes the ids: <pad> = 0, <unk> = 1, <s> = 2, </s> = 3, then the image and roles.
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)

# One turn per message, no separators: the role tokens already delimit turns. Only assistant
# content and its closing </s> are inside {% generation %}, so they alone get loss; </s>
# belongs to the answer so the model learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}</s>{% endgeneration %}"
    "{% else %}"
    "{{ raise_exception('unknown chat role ' + message['role'] + '; use user or assistant') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (notebook 02).

    Byte-level pre-tokenization means any string round-trips (no ``<unk>`` on unseen
    characters); the special tokens are added first so each is a single id and is never
    split by BPE, even when written inside text ("<image>\\nDescribe ...").
    """
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least "
                         f"{len(SPECIAL_TOKENS) + 256} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(iter(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN, additional_special_tokens=[IMAGE_TOKEN, USER_TOKEN, ASSISTANT_TOKEN],
        chat_template=CHAT_TEMPLATE, model_max_length=4096, padding_side="right")
    check_tokenizer(fast)
    return fast


def check_tokenizer(tok: PreTrainedTokenizerBase) -> None:
    """Raise ValueError unless ``tok`` has the tokens a VLM needs, each a single id (notebook 02).

    Called by the model when it is built from a tokenizer: a missing ``<image>`` would
    otherwise show up much later as images silently never reaching the LLM.
    """
    name = getattr(tok, "name_or_path", "") or type(tok).__name__
    for t in (IMAGE_TOKEN,):
        ids = tok.convert_tokens_to_ids(t)
        if ids is None or ids == tok.unk_token_id or len(tok.encode(t, add_special_tokens=False)) != 1:
            raise ValueError(f"tokenizer {name!r} has no single {t!r} token; add it with "
                             f"tok.add_special_tokens({{'additional_special_tokens': [{t!r}]}}) "
                             f"and resize the LLM's embeddings")
    if tok.pad_token_id is None:
        raise ValueError(f"tokenizer {name!r} has no pad token; set tok.pad_token")
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {name!r} has no eos token")


def llava_to_messages(conversations: list[dict]) -> list[dict]:
    """LLaVA turns ``[{"from": "human"|"gpt", "value": ...}]`` -> chat messages (notebook 02).

    Messages already in ``{"role", "content"}`` form pass through, so both formats work.
    """
    out = []
    for i, turn in enumerate(conversations):
        if "role" in turn and "content" in turn:
            role, content = turn["role"], turn["content"]
        elif "from" in turn and "value" in turn:
            role, content = turn["from"], turn["value"]
        else:
            raise ValueError(f"conversation turn {i}: expected keys from/value or role/content, "
                             f"got {sorted(turn)}")
        if role not in _ROLES:
            raise ValueError(f"conversation turn {i}: unknown speaker {role!r} "
                             f"(expected one of {', '.join(_ROLES)})")
        out.append({"role": _ROLES[role], "content": content})
    return out
