"""Loading a backbone by checkpoint name or path, ours or a real one (notebook 02).

:func:`build_vision_tower` and :func:`build_llm` take a Hugging Face checkpoint folder (our
tiny CLIP / Llama under ``artifacts/``) or a hub name (``"openai/clip-vit-large-patch14-336"``,
a Llama, 4-bit through bitsandbytes) on the same code path, and refuse a checkpoint whose
weights do not fit its config instead of initialising them randomly.

Weights load in fp32 whatever dtype the checkpoint was saved in (most real Llama / Vicuna / CLIP
checkpoints ship in fp16 or bf16): the trainer keeps fp32 master weights and computes in bf16 only
under autocast. An fp16 Llama trained as saved diverges within steps; a bf16 one trains in pure bf16.
A quantised LLM keeps its 4-/8-bit linear layers; its other weights load in fp32.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def image_processor(image_size: int):
    """The ``CLIPImageProcessor`` matching a tower of ``image_size`` px (notebook 02)."""
    try:  # transformers 5 without torchvision: the PIL backend, same saved config
        from transformers import CLIPImageProcessorPil as Proc
    except ImportError:
        from transformers import CLIPImageProcessor as Proc
    return Proc(size={"shortest_edge": image_size},
                crop_size={"height": image_size, "width": image_size})


def _check_weights(model_cls, path: Path, **kwargs):
    """``from_pretrained`` that turns missing / mismatched weights into one clear error.

    transformers only *warns* when a checkpoint's tensors do not fit its config (and
    initialises them randomly), which would silently give a VLM a random backbone.
    """
    kwargs.setdefault("dtype", torch.float32)
    try:
        model, info = model_cls.from_pretrained(path, output_loading_info=True, **kwargs)
    except RuntimeError as e:  # size mismatch raised by torch / transformers
        raise ValueError(f"checkpoint {path}: weights do not match its config.json: {e}") from e
    except Exception as e:  # e.g. safetensors' SafetensorError on a truncated file: it names no path
        raise ValueError(f"checkpoint {path}: cannot read its weights ({type(e).__name__}: {e})") from e
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "mismatched_keys")}
    if problems:
        detail = "; ".join(f"{k}: {sorted(map(str, v))[:5]}" for k, v in problems.items())
        raise ValueError(f"checkpoint {path}: weights do not match its config.json ({detail})")
    return model


def _source(name_or_path: str | Path) -> str:
    """A local checkpoint folder (checked), or a hub name passed on as it is.

    A path that looks local (absolute, ``./``, ``~``, or deeper than ``org/name``) and does not exist is
    an error naming it, rather than the hub's "Repo id must be in the form ..." message.
    """
    text = os.path.expanduser(str(name_or_path))
    path = Path(text)
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json; not a Hugging Face checkpoint folder")
        return str(path)
    if path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"{path}: no such checkpoint folder")
    return text


def build_vision_tower(name_or_path: str | Path | None, config=None, **kwargs):
    """A CLIP-like vision tower: from a checkpoint (name or path) or a fresh one from ``config`` (notebook 02).

    The same call loads our tiny tower (``artifacts/.../vision``), a ``CLIPModel`` folder,
    or a hub name such as ``"openai/clip-vit-large-patch14-336"`` on a machine that can
    download it. SigLIP towers load through ``AutoModel`` as their vision part.
    """
    from transformers import AutoConfig, AutoModel, CLIPVisionConfig, CLIPVisionModel
    if name_or_path is None:
        if config is None:
            raise ValueError("build_vision_tower: give a checkpoint name/path or a config")
        if isinstance(config, dict):
            config = CLIPVisionConfig(**config)
        return CLIPVisionModel(config)
    source = _source(name_or_path)
    import transformers
    config = AutoConfig.from_pretrained(source)
    # Dual encoders (CLIP, SigLIP): load only the vision half with its own *VisionModel class.
    dual = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}
    vision_config = getattr(config, "vision_config", config) if config.model_type in dual else config
    if not all(hasattr(vision_config, a) for a in ("image_size", "patch_size", "hidden_size")):
        raise ValueError(f"checkpoint {source} (model_type {config.model_type!r}) is not a vision tower: its config "
                         "has no image_size / patch_size; give a CLIP, SigLIP or other ViT checkpoint")
    if config.model_type in dual:
        return _check_weights(getattr(transformers, dual[config.model_type]), source, **kwargs)
    return _check_weights(AutoModel, source, **kwargs)  # a vision-only checkpoint


def build_llm(name_or_path: str | Path | None, config=None, quantization_config=None, **kwargs):
    """A causal LM from a checkpoint (name or path) or a fresh one from ``config`` (notebook 02).

    ``quantization_config`` (e.g. ``BitsAndBytesConfig(load_in_4bit=True)``) loads it
    quantized for QLoRA; both our tiny Llama and e.g. ``"lmsys/vicuna-7b-v1.5"`` go
    through this same ``AutoModelForCausalLM.from_pretrained`` call.
    """
    from transformers import AutoModelForCausalLM
    if name_or_path is None:
        if config is None:
            raise ValueError("build_llm: give a checkpoint name/path or a config")
        if quantization_config is not None:
            raise ValueError("build_llm: quantization needs a checkpoint; save the model first")
        return AutoModelForCausalLM.from_config(config)
    source = _source(name_or_path)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    return _check_weights(AutoModelForCausalLM, source, **kwargs)
