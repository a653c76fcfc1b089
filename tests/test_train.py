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

from vlkit.train import TrainConfig, TrainingDiverged, train  # noqa: E402


def _run(recipe, steps=4, **kw):
    m = T.model()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    cfg = TrainConfig(recipe=recipe, max_steps=steps, batch_size=4, lr_connector=1e-2, lr_llm=1e-3,
                      lr_vision=1e-3, lr_lora=1e-2, progress=False, **kw)
    r = train(m, T.ColorDataset(16), cfg, processor=T.processor(m))
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
    kw = dict(recipe="connector+llm", max_steps=5, batch_size=3, grad_accum=2, lr_llm=1e-3, save_every=2,
              progress=False)
    ref = T.model()
    train(ref, T.ColorDataset(10), TrainConfig(**kw, output_dir=str(tmp_path / "a")), processor=T.processor(ref))

    def interrupt(state):
        if state.step == 3:  # after the step-2 checkpoint, before step 4's
            raise _Stop

    m = T.model()
    with pytest.raises(_Stop):
        train(m, T.ColorDataset(10), TrainConfig(**kw, output_dir=str(tmp_path / "b")),
              processor=T.processor(m), callbacks=[interrupt])
    m = T.model()
    r = train(m, T.ColorDataset(10), TrainConfig(**kw, output_dir=str(tmp_path / "b"), resume=True),
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
        train(m, T.ColorDataset(8), TrainConfig(recipe="connector", max_steps=6, batch_size=2, save_every=1,
                                                output_dir=str(tmp_path), progress=False),
              processor=T.processor(m), callbacks=[poison])
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


def test_config_errors_and_profiles():
    with pytest.raises(ValueError, match="unknown recipe 'everything'.*qlora"):
        TrainConfig(recipe="everything")
    with pytest.raises(ValueError, match="unknown profile"):
        TrainConfig.for_profile("huge")
    assert TrainConfig.for_profile("smoke").max_steps < TrainConfig.for_profile("full").max_steps
    assert TrainConfig(max_steps=100, warmup_ratio=0.03).warmup_steps == 3
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp16")


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
