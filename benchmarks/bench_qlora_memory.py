"""QLoRA memory: the LLM's weight footprint in 4-bit nf4 vs fp32 (notebook 03; target <= 0.35x).

Same tiny Llama (4 layers x 256, vocab 2048) as the throughput benchmark, loaded through
``BitsAndBytesConfig`` exactly as ``vlkit.train`` does for the ``qlora`` recipe. bitsandbytes
quantizes the linear layers; embeddings and the LM head stay fp32, so the whole-model ratio is
above the linear-layer ratio (~0.14x with double quantization).

    python benchmarks/bench_qlora_memory.py
"""
from __future__ import annotations

import tempfile

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from vlkit.train import bnb_cpu_safe


def weight_bytes(model, only_linear: bool = False) -> int:
    import bitsandbytes as bnb

    total = 0
    for mod in model.modules():
        if only_linear and not isinstance(mod, (torch.nn.Linear, bnb.nn.Linear4bit)):
            continue
        if only_linear and mod is model.get_output_embeddings():
            continue
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            total += t.numel() * t.element_size()
            qs = getattr(t, "quant_state", None)  # absmax / code tables of nf4 blocks
            if qs is not None:
                total += sum(x.numel() * x.element_size() for x in (qs.absmax, qs.code) if x is not None)
                if qs.state2 is not None:
                    total += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
    return total


def main() -> None:
    cfg = LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    torch.manual_seed(0)
    fp32 = LlamaForCausalLM(cfg)
    qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)
    with tempfile.TemporaryDirectory() as d:
        fp32.save_pretrained(d)
        q4 = bnb_cpu_safe(AutoModelForCausalLM.from_pretrained(d, quantization_config=qcfg))
    a, b = fp32.get_memory_footprint(), q4.get_memory_footprint()
    la, lb = weight_bytes(fp32, True), weight_bytes(q4, True)
    x = torch.randint(0, 2048, (2, 16))
    with torch.no_grad():
        d_loss = abs(fp32(input_ids=x, labels=x).loss.item() - q4(input_ids=x, labels=x).loss.item())
    print(f"LLM weights fp32: {a / 2**20:.2f} MiB   nf4: {b / 2**20:.2f} MiB   ratio {b / a:.3f} (target <= 0.35)")
    print(f"linear layers only: fp32 {la / 2**20:.2f} MiB  nf4 {lb / 2**20:.2f} MiB  ratio {lb / la:.3f}")
    print(f"|loss fp32 - loss nf4| on random tokens: {d_loss:.4f}")


if __name__ == "__main__":
    main()
