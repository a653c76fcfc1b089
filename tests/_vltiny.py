"""Tiny VLM pieces shared by the model/train tests (vision 2x32, Llama 2x64, 16 px images)."""
from __future__ import annotations

import functools

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from vlkit.model import VLModel
from vlkit.processor import VLProcessor
from vlkit.tokenizer import train_tokenizer

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


@functools.lru_cache(maxsize=1)
def tokenizer():
    texts = [f"what color is the image? it is {c}." for c in COLORS] * 5
    return train_tokenizer(texts, vocab_size=300)


def image_processor():
    return CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})


def backbones(seed: int = 0, tie: bool = False):
    torch.manual_seed(seed)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, image_size=16, patch_size=8))
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer()), hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                       max_position_embeddings=128, tie_word_embeddings=tie))
    return vision, llm


def model(seed: int = 0, llm_quantization: str | None = None, **kwargs) -> VLModel:
    """The tiny VLM; ``llm_quantization="nf4"`` loads its LLM in 4-bit from a saved checkpoint, as
    :func:`vlkit.build.build_model` does for QLoRA."""
    vision, llm = backbones(seed, tie=kwargs.pop("tie", False))
    if llm_quantization:
        import tempfile

        from vlkit.backbones import build_llm
        from vlkit.train.quantize import quantization_config
        with tempfile.TemporaryDirectory() as d:
            llm.save_pretrained(d)
            llm = build_llm(d, quantization_config=quantization_config(llm_quantization))
    torch.manual_seed(seed + 1)
    return VLModel.from_backbones(vision, llm, tokenizer(), **kwargs)


def processor(m: VLModel) -> VLProcessor:
    return VLProcessor.for_model(m, image_processor(), tokenizer())


class ColorDataset(Dataset):
    """Solid-colour images; the answer names the colour: learnable only through the image."""

    def __init__(self, n: int = 16):
        self.items = [list(COLORS)[i % len(COLORS)] for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        c = self.items[i]
        return {"id": str(i), "image": Image.new("RGB", (16, 16), COLORS[c]),
                "conversations": [{"from": "human", "value": "<image>\nwhat color is the image?"},
                                  {"from": "gpt", "value": f"it is {c}."}]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Import into a test module to run it on one torch thread: tiny tensors run far faster on one thread
    than on two of a shared 2-core machine, where the second spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
