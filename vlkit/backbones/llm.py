"""The tiny Llama: its config, its text corpus, and its pretraining (notebook 02).

A tiny ``LlamaForCausalLM`` learns from the text corpus: captions, and instruction
conversations that follow their scene written as text (LLaVA's symbolic context), so the LLM
learns to answer from what is in front of it, the skill stage 2 then points at the visual
tokens.
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from vlkit import world as W
from vlkit.backbones.schedule import lr_lambda
from vlkit.tokens import IMAGE_TOKEN

if TYPE_CHECKING:  # for annotations only: transformers is imported lazily below
    import transformers

    from vlkit.backbones import BackboneConfig


def tiny_llm_config(cfg: BackboneConfig, tokenizer) -> "transformers.LlamaConfig":
    """A ``LlamaConfig`` of the sizes in ``cfg`` for ``tokenizer`` (notebook 02)."""
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.llm_hidden, intermediate_size=cfg.llm_intermediate,
        num_hidden_layers=cfg.llm_layers, num_attention_heads=cfg.llm_heads,
        num_key_value_heads=cfg.llm_heads, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


# Version of what text_corpus writes; part of the backbones' cache key (the config does not see
# a change of the corpus). 2: the LLM reads the scene as text before each conversation (was <image>).
CORPUS_FORMAT = 2


def text_corpus(cfg: BackboneConfig, n_scenes: int, stream: int) -> dict[str, list]:
    """Captions and teacher conversations about ``n_scenes`` world scenes (notebook 02).

    Generated the way notebook 01 makes its data (world captions + the template teacher's
    three instruction types, ``<image>`` in the first turn) but from scene streams of their
    own, so notebook 02 runs alone and its held-out text (another ``stream``) is never seen
    in training. ``contexts[i]`` is the scene of ``conversations[i]`` as text (LLaVA's
    symbolic context, what the teacher read), which :func:`corpus_ids` puts where the image
    goes. Returns ``{"captions": [str], "conversations": [[{from, value}]], "contexts": [str]}``.
    """
    from vlkit.teacher import KINDS, TemplateTeacher
    teacher = TemplateTeacher(seed=cfg.seed)
    seed = cfg.seed * 100 + stream
    caps, convs, contexts = [], [], []
    for i in range(n_scenes):
        rng = W.scene_rng(seed, i)
        scene = W.sample_scene(rng, cfg.world, W.scene_id(seed, i))
        context = W.symbolic_context(scene, rng)
        caps += context.split("\n\n")[0].split("\n")
        for kind in KINDS:
            turns = [dict(t) for t in teacher.generate(context, kind, key=scene.id)]
            turns[0]["value"] = f"{IMAGE_TOKEN}\n{turns[0]['value']}"
            convs.append(turns)
            contexts.append(context.strip())
    return {"captions": caps, "conversations": convs, "contexts": contexts}


def corpus_texts(corpus: dict) -> list[str]:
    """The captions and conversations, for training the tokenizer (notebook 02).

    Not the scene contexts: the tokenizer's merges should be those of the language the VLM
    reads and writes (trained with the contexts too, the box coordinates grew the vocabulary
    from 771 to 1,742 tokens, and the LM head with it).
    """
    return corpus["captions"] + [t["value"] for c in corpus["conversations"] for t in c]


def scene_as_text(conversation: list[dict], context: str) -> list[dict]:
    """``conversation`` with its ``<image>`` replaced by the scene as text: what the LLM reads (notebook 02).

    Pretrained on the conversations with an ``<image>`` slot it never saw filled, the LLM learned
    answer priors and to ignore that slot, and notebook 03 could not teach it to bind a colour
    to a shape in its budget (README, "Where binding fails"). With the scene in front of every
    conversation, each answer can be read from the document, as in a real LLM's pretraining text.
    """
    first = conversation[0]["value"]
    if IMAGE_TOKEN not in first:
        raise ValueError(f"first turn has no {IMAGE_TOKEN} to replace: {first[:60]!r}")
    return [{**conversation[0], "value": first.replace(IMAGE_TOKEN, context, 1)}, *conversation[1:]]


def corpus_ids(corpus: dict, tokenizer) -> list[int]:
    """All documents as one id stream: ``<s> caption </s>`` and chat-templated conversations,
    each after its scene as text (:func:`scene_as_text`).

    The LLM thus learns the role tokens and to end answers with ``</s>`` before any VLM
    training, as a chat-tuned base LLM (Vicuna in LLaVA) would.
    """
    from vlkit.tokenizer import llava_to_messages
    ids: list[int] = []
    for c in corpus["captions"]:
        ids += [tokenizer.bos_token_id, *tokenizer.encode(c, add_special_tokens=False),
                tokenizer.eos_token_id]
    for conv, context in zip(corpus["conversations"], corpus["contexts"], strict=True):
        ids += tokenizer.apply_chat_template(llava_to_messages(scene_as_text(conv, context)), tokenize=True,
                                             return_dict=True)["input_ids"]
    return ids


def pack(ids: list[int], block: int) -> torch.Tensor:
    """Cut an id stream into ``[N, block]`` rows (the tail that does not fill a row is dropped)."""
    n = len(ids) // block
    if n == 0:
        raise ValueError(f"corpus of {len(ids)} tokens is shorter than one block of {block}")
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def train_llm(cfg: BackboneConfig, tokenizer, train_blocks: torch.Tensor, progress: bool = True,
              on_log: Callable[[dict], None] | None = None):
    """Pretrain a tiny ``LlamaForCausalLM`` on packed text blocks (notebook 02). Returns ``(llm, history)``."""
    from transformers import LlamaForCausalLM
    set_seed(cfg.seed)
    llm = LlamaForCausalLM(tiny_llm_config(cfg, tokenizer))
    decay = [p for p in llm.parameters() if p.ndim >= 2]
    no_decay = [p for p in llm.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.llm_lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.llm_warmup, cfg.llm_steps))
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train_blocks), generator=g)
    history, t0 = [], time.perf_counter()
    llm.train()
    bar = tqdm(range(cfg.llm_steps), desc="LLM pretraining", disable=not progress)
    for step in bar:
        start = (step * cfg.llm_batch) % len(order)
        idx = order[start: start + cfg.llm_batch]
        if len(idx) < cfg.llm_batch:  # next epoch: a new shuffle
            order = torch.randperm(len(train_blocks), generator=g)
            idx = order[: cfg.llm_batch]
        x = train_blocks[idx]
        loss = llm(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.llm_steps - 1:
            row = {"step": step, "lr": sched.get_last_lr()[0], "s": round(time.perf_counter() - t0, 2),
                   "loss": round(loss.item(), 4)}
            history.append(row)
            bar.set_postfix(loss=row["loss"])
            if on_log:
                on_log(row)
    llm.eval()
    return llm, history


@torch.no_grad()
def perplexity(llm, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """exp(mean next-token NLL) over packed held-out blocks (notebook 02)."""
    llm.eval()
    nll, n = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i: i + batch_size].to(llm.device)
        logits = llm(input_ids=x).logits[:, :-1].float()
        nll += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
        n += x[:, 1:].numel()
    return math.exp(nll / n)


HELDOUT_STREAM = 12  # the scene stream of the held-out text; training text is stream 11


def heldout_blocks(cfg, tokenizer) -> torch.Tensor:
    """Notebook 02's held-out text (``cfg.text_val_scenes`` scenes never trained on), packed like training
    text: the blocks its perplexity is measured on (notebooks 02, 04)."""
    return pack(corpus_ids(text_corpus(cfg, cfg.text_val_scenes, stream=HELDOUT_STREAM), tokenizer), cfg.llm_block)
