"""Quantised LLM weights through bitsandbytes, for QLoRA (notebook 03).

The LLM is loaded quantised (4-bit nf4 or 8-bit) from its checkpoint, before any module is
inserted, so that inserted modules and LoRA adapters stay in full precision.
"""
from __future__ import annotations

import torch


def quantization_config(kind: str):
    """The ``BitsAndBytesConfig`` of ``kind``: ``"nf4"`` (QLoRA: double quantisation) or ``"int8"``."""
    from transformers import BitsAndBytesConfig
    if kind == "nf4":
        # fp32 compute: the workbook's default machine is a CPU, where bf16 is emulated without AVX-512 / AMX
        # (~100x slower, docs/speed.md); on a GPU pass BitsAndBytesConfig(bnb_4bit_compute_dtype=torch.bfloat16)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32)
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"unknown LLM quantization {kind!r}; use 'nf4' or 'int8'")


def bnb_cpu_safe(llm):
    """Turn off bitsandbytes' packed CPU inference kernel on 4-bit layers (notebook 03).

    bitsandbytes 0.50 repacks 4-bit weights for AVX512-BF16 CPUs at the first no-grad eval
    call and asserts out_features % 32 == 0 there: a Llama with intermediate size 688 crashes
    in ``generate``. The unpacked path is correct for every shape.
    """
    for mod in llm.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False
    return llm


def is_quantized(llm) -> bool:
    """Whether ``llm``'s weights are bitsandbytes 4-bit or 8-bit."""
    return bool(getattr(llm, "is_loaded_in_4bit", False) or getattr(llm, "is_loaded_in_8bit", False))


def merge_lora(model):
    """Fold LoRA adapters into the LLM's weights so the model saves as a plain VLModel (notebook 03).

    A quantised LLM cannot be saved as a plain checkpoint once merged (its weights are packed
    4-bit blocks without their quantisation config): refused with a message.
    """
    from peft import PeftModel
    if not isinstance(model.language_model, PeftModel):
        return model
    if is_quantized(model.language_model):
        raise ValueError("merge_lora: the LLM is quantised (QLoRA); a merged 4-bit/8-bit model does not save as a "
                         "plain checkpoint. Save the LoRA adapters instead (model.language_model.save_pretrained), "
                         "or load the LLM unquantised, apply the adapters and merge there")
    model.language_model = model.language_model.merge_and_unload()
    return model
