"""benchmarks/bench_compression.py end to end on the tiny model, one round (issue 19).

Guards what the benchmark relies on: every method switches on and off by name, each timed forward
computes what ``vlkit.flops`` predicts (FlopCounterMode, eager attention: FastV really drops), and
the timing wrappers it puts around ToMe's and FastV's internals are gone afterwards.
"""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import vlkit.compressors.fastv as fastv_module
from vlkit.insertions import blocks

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_compression.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_compression", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measure_tiny_one_round():
    bench = _bench()
    internals = (fastv_module._begin, fastv_module._end, fastv_module._drop, fastv_module._Run.decide)
    model = bench.tiny()
    res = bench.measure("tiny", model, bsz=2, rounds=1, warmup=0, amp=contextlib.nullcontext, check_flops=True)
    rows = {r["method"]: r for r in res["methods"]}
    assert list(rows) == list(bench.METHODS)
    assert res["reference_flops_counted_equal"] and all(r["flops_counted_equal"] for r in rows.values())
    assert all(0 < r["predicted_saving"] < 1 and r["own_ms"] > 0 and r["ms_50"] > 0 for r in rows.values())
    assert rows["fastv"]["llm_visual"] == "64->32" and rows["vmtc"]["llm_visual"] == 32
    assert rows["prumerge"]["prumerge_mean_kept"] >= 1
    # the timing wrappers are removed, and the model is back to no reduction, ToMe's patch undone
    assert (fastv_module._begin, fastv_module._end, fastv_module._drop, fastv_module._Run.decide) == internals
    assert model.config.compressor == "identity" and model.num_image_tokens == 64
    assert all("forward" not in vars(layer) for layer in blocks(model, "vision"))
