import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import _vltiny as T  # noqa: E402

from vlkit.specs import LoraSpec, ParamGroup, TrainSpec  # noqa: E402
from vlkit.train import TrainingDiverged, train  # noqa: E402

LR = {"connector": 1e-2, "llm": 1e-3, "vision": 1e-3, "lora": 1e-2, "insertions": 1e-2}
RECIPES = {"connector": ("connector",), "connector+llm": ("connector", "llm"),
           "full": ("connector", "llm", "vision"), "lora": ("connector", "lora"), "qlora": ("connector", "lora")}


def spec(recipe="connector", steps=4, batch_size=4, **kw) -> TrainSpec:
    """The TrainSpec of a named recipe, as the old closed recipes were: which kinds train."""
    groups = tuple(ParamGroup(k, LR[k]) for k in RECIPES[recipe])
    lora = LoraSpec(r=8, alpha=16) if "lora" in recipe else None
    kw.setdefault("mixed_precision", "no")
    return TrainSpec(groups=groups, steps=steps, batch_size=batch_size, lora=lora, progress=False, **kw)


def _run(recipe, steps=4, output_dir=None, **kw):
    m = T.model(llm_quantization="nf4") if recipe == "qlora" else T.model()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    r = train(m, T.ColorDataset(16), spec(recipe, steps, **kw), processor=T.processor(m), output_dir=output_dir)
    return m, before, r


def _changed(m, before, prefix):
    after = dict(m.named_parameters())
    return any(not torch.equal(before[n], after[n]) for n in before if n.startswith(prefix) and n in after)


@pytest.mark.parametrize("recipe,llm,vision", [("connector", False, False), ("connector+llm", True, False),
                                               ("full", True, True)])
def test_recipes_freeze_what_they_should(recipe, llm, vision):
    m, before, r = _run(recipe, steps=2)
    grads = {n: p.requires_grad for n, p in m.named_parameters()}
    assert all(grads[n] for n in grads if n.startswith("connector."))
    assert all(grads[n] == llm for n in grads if n.startswith("language_model."))
    assert all(grads[n] == vision for n in grads if n.startswith("vision_tower."))
    assert _changed(m, before, "connector.")
    assert _changed(m, before, "language_model.") == llm
    assert _changed(m, before, "vision_tower.") == vision


@pytest.mark.parametrize("recipe", ["lora", "qlora"])
def test_lora_and_qlora_train_and_loss_falls(recipe, tmp_path):
    m, before, r = _run(recipe, steps=8, output_dir=str(tmp_path))
    assert r.losses[-1] < r.losses[0] - 0.3
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names)
    assert all("lora_" in n or n.startswith("connector.") for n in names)
    if recipe == "qlora":
        import bitsandbytes as bnb
        assert any(isinstance(mod, bnb.nn.Linear4bit) for mod in m.language_model.modules())
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, 9)) and "lr_lora" in lines[0]
    p = T.processor(m)
    gen = p.prompt(["what color is the image?"], [T.ColorDataset(1)[0]["image"]])
    out = m.generate(**gen, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 3)
    if recipe == "qlora":  # merged into packed 4-bit weights it would save a checkpoint that does not load
        from vlkit.train import merge_lora
        with pytest.raises(ValueError, match="quantised.*does not save as a plain checkpoint"):
            merge_lora(m)
    if recipe == "lora":  # merged adapters save as a plain VLModel with the same outputs
        from vlkit.model import VLModel
        from vlkit.train import merge_lora

        b = p.collate([T.ColorDataset(2)[i] for i in range(2)])
        ref = m(**b).logits
        merge_lora(m).save_pretrained(tmp_path / "merged")
        torch.testing.assert_close(VLModel.from_pretrained(tmp_path / "merged")(**b).logits, ref,
                                   atol=1e-5, rtol=1e-5)


class _Stop(Exception):
    pass


def test_resume_after_interruption_gives_identical_weights(tmp_path):
    tspec = spec("connector+llm", steps=5, batch_size=3, grad_accum=2)
    ref = T.model()
    train(ref, T.ColorDataset(10), tspec, output_dir=tmp_path / "a", save_every=2, processor=T.processor(ref))

    def interrupt(state):
        if state.step == 3:  # after the step-2 checkpoint, before step 4's
            raise _Stop

    m = T.model()
    with pytest.raises(_Stop):
        train(m, T.ColorDataset(10), tspec, output_dir=tmp_path / "b", save_every=2,
              processor=T.processor(m), callbacks=[interrupt])
    m = T.model()
    r = train(m, T.ColorDataset(10), tspec, output_dir=tmp_path / "b", save_every=2, resume=True,
              processor=T.processor(m))
    assert r.checkpoint.name == "step-000005"
    for (n, a), (_, b) in zip(ref.named_parameters(), m.named_parameters()):
        assert torch.equal(a, b), n
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def poison(state):
        if state.step == 2:
            with torch.no_grad():
                state.model.connector.proj.weight.fill_(float("nan"))

    m = T.model()
    with pytest.raises(TrainingDiverged, match=r"step 3.*step-000002"):
        train(m, T.ColorDataset(8), spec("connector", steps=6, batch_size=2), save_every=1,
              output_dir=tmp_path, processor=T.processor(m), callbacks=[poison])
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts[-1] == "step-000002"
    w = load_file(tmp_path / "checkpoints" / "step-000002" / "trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in w.values())


def test_accelerate_launch_two_processes(tmp_path):
    script = Path(__file__).parent / "train_tiny_script.py"
    accelerate = Path(sys.executable).parent / "accelerate"
    # `accelerate launch --cpu --num_processes 2` starts ONE process unless Intel MPI is set up
    # (accelerate 1.x); torchrun's launcher (--multi_gpu) with ACCELERATE_USE_CPU gives 2 CPU
    # processes on gloo, which is what a multi-GPU run does on a GPU box.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["w_sum"] == r1["w_sum"] and r0["losses"] == r1["losses"]  # DDP kept replicas in sync
    assert (tmp_path / "checkpoints" / "step-000003" / "trainable.safetensors").is_file()


def test_spec_errors_name_the_value_and_what_is_known():
    with pytest.raises(ValueError, match="unknown parameter group 'everything'.*connector.*lora"):
        ParamGroup("everything", 1e-3)
    with pytest.raises(ValueError, match="lr must be > 0"):
        ParamGroup("llm", 0.0)
    with pytest.raises(ValueError, match="at least one parameter group"):
        TrainSpec(groups=(), steps=1, batch_size=1)
    with pytest.raises(ValueError, match="mixed precision 'fp16'"):
        spec(mixed_precision="fp16")
    with pytest.raises(ValueError, match="'lora' parameter group and a LoraSpec"):
        TrainSpec(groups=(ParamGroup("lora", 1e-3),), steps=1, batch_size=1)
    with pytest.raises(ValueError, match="repeat"):
        TrainSpec(groups=(ParamGroup("llm", 1e-3), ParamGroup("llm", 1e-4)), steps=1, batch_size=1)
    assert TrainSpec(groups=(ParamGroup("llm", 1e-3),), steps=100, batch_size=1, warmup_ratio=0.03).warmup_steps == 3


def test_a_group_that_selects_nothing_fails_before_training():
    m = T.model()
    with pytest.raises(ValueError, match=r"\['insertions'\] select no trainable parameter.*kinds are"):
        train(m, T.ColorDataset(4), TrainSpec(groups=(ParamGroup("insertions", 1e-3),), steps=1, batch_size=2,
                                              progress=False), processor=T.processor(m))
    with pytest.raises(ValueError, match="selected by the groups"):
        train(m, T.ColorDataset(4), TrainSpec(groups=(ParamGroup("connector", 1e-3),
                                                      ParamGroup("proj", 1e-3, patterns=("connector.*",))),
                                              steps=1, batch_size=2, progress=False), processor=T.processor(m))


def test_pattern_groups_train_what_they_match_at_their_own_lr(tmp_path):
    m = T.model()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    groups = (ParamGroup("connector", 1e-2), ParamGroup("norms", 5e-3, patterns=("language_model.*norm*",)))
    train(m, T.ColorDataset(8), TrainSpec(groups=groups, steps=2, batch_size=4, progress=False, log_every=1),
          processor=T.processor(m), output_dir=tmp_path)
    changed = {n for n, p in m.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(n.startswith("connector.") or ("norm" in n and n.startswith("language_model."))
                           for n in changed)
    assert any("norm" in n for n in changed)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["lr_norms"] < 5e-3 and "lr_connector" in first  # warm-up from the group's own lr


def test_resume_refuses_another_spec_unless_told(tmp_path):
    m = T.model()
    train(m, T.ColorDataset(8), spec("connector", steps=2, batch_size=2), output_dir=tmp_path,
          processor=T.processor(m))
    m = T.model()
    with pytest.raises(ValueError, match=r"another training spec.*seed \(saved 0, now 1\).*ignore_spec_change"):
        train(m, T.ColorDataset(8), spec("connector", steps=4, batch_size=2, seed=1), output_dir=tmp_path,
              resume=True, processor=T.processor(m))
    r = train(m, T.ColorDataset(8), spec("connector", steps=4, batch_size=2, seed=1), output_dir=tmp_path,
              resume=True, ignore_spec_change=True, processor=T.processor(m))
    assert len(r.losses) == 2  # steps 3 and 4 only


def test_bf16_mixed_precision_trains_fp32_weights_close_to_fp32():
    """bf16 autocast: the weights stay fp32 and the losses follow the fp32 run closely."""
    m16, _, r16 = _run("connector+llm", steps=4, mixed_precision="bf16")
    m32, _, r32 = _run("connector+llm", steps=4)
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    assert r16.losses != r32.losses  # it really ran in bf16
    assert r16.losses == pytest.approx(r32.losses, rel=0.05)


def test_length_grouped_sampler_covers_each_epoch_pads_less_and_replays():
    from vlkit.train import StepSampler
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 200, (1000,), generator=g).tolist()
    plain = list(StepSampler(1000, 8, 0, 0, 1, 0, 250))
    grouped = list(StepSampler(1000, 8, 0, 0, 1, 0, 250, lengths=lengths, bucket=50))
    assert sorted(i for b in grouped[:125] for i in b) == list(range(1000))  # epoch 0: each example once
    assert grouped[:125] != plain[:125]

    def padded(batches):  # tokens a right-padded batch costs
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded(grouped) < 0.8 * padded(plain)
    # one bucket per batch, except where a bucket ends inside a batch (< 4 per 50-batch megabatch)
    assert sum(len({lengths[i] // 50 for i in b}) == 1 for b in grouped) >= 0.9 * len(grouped)
    assert len({lengths[i] // 50 for i in grouped[0] + grouped[1] + grouped[2] + grouped[3]}) > 1  # buckets shuffled
    assert list(StepSampler(1000, 8, 0, 0, 1, 100, 150, lengths=lengths, bucket=50)) == grouped[100:]
    with pytest.raises(ValueError, match="lengths"):
        StepSampler(10, 2, 0, 0, 1, 0, 5, lengths=[1, 2])


def test_training_memory_counts_weights_gradients_optimizer_state_and_saved_activations():
    from vlkit.train.memory import CPU_METHOD
    conn, _, rc = _run("connector", steps=1)
    full, _, rf = _run("full", steps=1)
    assert rc.memory_method == rf.memory_method == CPU_METHOD
    weights = sum(p.numel() * p.element_size() for p in conn.parameters())
    trainable = sum(p.numel() * p.element_size() for p in conn.connector.parameters())
    # AdamW: a gradient and two moments per trainable parameter; activations saved for backward on top
    assert rc.peak_memory_bytes > weights + 3 * trainable
    frozen_in_conn = weights - trainable
    assert rf.peak_memory_bytes - rc.peak_memory_bytes >= 3 * frozen_in_conn
    again = _run("connector", steps=1)[2]
    assert again.peak_memory_bytes == rc.peak_memory_bytes  # the same in any process state
