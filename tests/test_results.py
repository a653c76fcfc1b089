"""vlkit.results: one schema per evaluated row, written atomically, copied into the run, read back strictly."""
import json

import pytest

from vlkit import results
from vlkit.metrics import RUN_DIR_ENV


def _result(variant="LLaVA", seed=0, profile="smoke"):
    r = {k: None for k in results.REQUIRED}
    r.update(schema=results.SCHEMA, notebook="03", variant=variant, train_seed=seed, profile=profile,
             metrics={"Binding": 50.0}, baselines={"Binding": {"chance": 25.0}}, spec={}, training={},
             parameters={}, weight_bytes={}, machine={})
    return r


def test_publish_writes_artifacts_and_the_run_folder_and_load_reads_one_run(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_ARTIFACTS", str(tmp_path / "artifacts"))
    run = tmp_path / "run"
    monkeypatch.setenv(RUN_DIR_ENV, str(run))
    path = results.publish(_result("QLoRA (nf4 + LoRA)", seed=2), [{"pid": "1", "correct": 1}])
    assert path == tmp_path / "artifacts" / "smoke" / "results" / "03" / "qlora-nf4-lora--seed2.json"
    saved = json.loads(path.read_text())
    assert saved["predictions"] == "qlora-nf4-lora--seed2.predictions.jsonl"
    results.publish(_result(seed=0), [{"pid": "1", "correct": 0}])
    loaded = results.load(run)
    assert sorted((r["variant"], r["train_seed"]) for r in loaded) == [("LLaVA", 0), ("QLoRA (nf4 + LoRA)", 2)]
    assert results.predictions(run, saved) == [{"pid": "1", "correct": 1}]
    assert not list(run.rglob("*.tmp"))


def test_load_refuses_other_schemas_mixed_profiles_and_missing_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results/ folder"):
        results.load(tmp_path)
    folder = tmp_path / "results" / "03"
    folder.mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps({**_result(), "schema": "vlkit.result/0"}))
    with pytest.raises(ValueError, match=r"a\.json: schema 'vlkit.result/0'"):
        results.load(tmp_path)
    (folder / "a.json").write_text(json.dumps(_result()))
    (folder / "b.json").write_text(json.dumps(_result(profile="full")))
    with pytest.raises(ValueError, match="several profiles"):
        results.load(tmp_path)
    (folder / "b.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"b\.json: not valid JSON"):
        results.load(tmp_path)
    bad = _result()
    del bad["latency"]
    with pytest.raises(ValueError, match="missing latency"):
        results.validate(bad)
