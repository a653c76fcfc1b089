"""Training: the loop, parameter groups, checkpoints, quantisation, hardware (notebooks 03-08).

``train(model, dataset, spec)`` trains what a :class:`vlkit.specs.TrainSpec` names; the cached,
spec-keyed version that every notebook uses is :func:`vlkit.stages.train_stage`.
"""
from vlkit.train.groups import parameter_kind, prepare
from vlkit.train.hardware import bf16_is_native, machine_info, parameter_counts, weight_bytes
from vlkit.train.loop import TrainingDiverged, TrainResult, TrainState, train
from vlkit.train.quantize import bnb_cpu_safe, is_quantized, merge_lora, quantization_config
from vlkit.train.sampler import StepSampler, example_lengths

__all__ = ["train", "TrainResult", "TrainState", "TrainingDiverged", "prepare", "parameter_kind",
           "bf16_is_native", "machine_info", "parameter_counts", "weight_bytes", "bnb_cpu_safe", "is_quantized",
           "merge_lora", "quantization_config", "StepSampler", "example_lengths"]
