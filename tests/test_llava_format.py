"""LLaVA JSON on disk: our dataset folder, round trips, real-file shapes, bad inputs."""
import json

import pytest

from vlkit import data, data_stats, world

# Shapes found in real LLaVA files: multi-turn with the image token after the question,
# integer-like ids, and text-only records (no "image" key, e.g. ShareGPT in LLaVA-1.5's mix).
REAL = [
    {"id": "000000033471", "image": "000000033471.jpg", "conversations": [
        {"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "The back of the bus features an advertisement."}]},
    {"id": "i6IyJda_0", "conversations": [
        {"from": "human", "value": "How to tell if a customer segment is well segmented?"},
        {"from": "gpt", "value": "Check that it is homogeneous, distinct and actionable."}]},
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    cfg = data.DataConfig(profile="test", n_images=20, seed=1)
    stats = data.generate_dataset(out, cfg, progress=False, workers=1)
    return out, cfg, stats


def test_layout_and_splits(dataset):
    out, cfg, stats = dataset
    assert {p.name for p in out.iterdir()} >= {"images", "scenes.jsonl", "llava_instruct.json",
                                                "captions.json", "hf", "stats.json"}
    assert not list(out.glob(".*"))  # no temporary files left behind
    rows = [json.loads(l) for l in (out / "scenes.jsonl").read_text().splitlines()]
    assert len(rows) == 20 == len(list((out / "images").glob("*.png")))
    assert [r["split"] for r in rows].count("train") == cfg.n_train == 16
    for r in rows:
        assert (out / r["image"]).is_file()
        assert world.Scene.from_dict(r) == world.sample_scenes(int(r["id"][-6:]) + 1, 1, cfg.world)[-1]
    assert json.loads((out / "stats.json").read_text())["records"] == stats["records"]


def test_instruct_records_valid_and_train_only(dataset):
    out, cfg, stats = dataset
    recs = data.load_llava_json(out / "llava_instruct.json")
    assert len(recs) == cfg.n_train * cfg.samples_per_image == stats["records"]
    train_images = {json.loads(l)["image"] for l in (out / "scenes.jsonl").read_text().splitlines()
                    if json.loads(l)["split"] == "train"}
    for r in recs:
        assert r["image"] in train_images and r["type"] in ("conversation", "detail", "reasoning")
        assert r["conversations"][0]["value"].startswith("<image>\n")
    assert list(data.iter_llava_json(out / "llava_instruct.json")) == recs
    caps = data.load_llava_json(out / "captions.json")
    assert len(caps) == cfg.n_train and all(len(c["conversations"]) == 2 for c in caps)


def test_hf_dataset_matches_json(dataset):
    import datasets
    out, cfg, _ = dataset
    dd = datasets.load_from_disk(str(out / "hf"))
    assert set(dd) == {"train", "validation", "test", "captions"}
    assert dd["train"].column_names == ["id", "image", "type", "conversations"]
    recs = data.load_llava_json(out / "llava_instruct.json")
    assert dd["train"][0]["conversations"] == recs[0]["conversations"]
    assert len(dd["validation"]) == cfg.n_val * cfg.samples_per_image


def test_generation_is_deterministic(tmp_path, dataset):
    out, cfg, _ = dataset
    data.generate_dataset(tmp_path / "again", cfg, progress=False, workers=2)
    for name in ("scenes.jsonl", "llava_instruct.json", "captions.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()


def test_mix_follows_llava():
    cfg = data.DataConfig(n_images=4000, seed=0)
    counts = {}
    for i in range(cfg.n_images):
        for k in data._kinds(cfg, i):
            counts[k] = counts.get(k, 0) + 1
    total = sum(counts.values())
    for k, w in data.LLAVA_MIX.items():
        assert abs(counts[k] / total - w / 158) < 0.02


def test_real_llava_shapes_round_trip(tmp_path):
    p = tmp_path / "real.json"
    p.write_text(json.dumps(REAL))
    recs = data.load_llava_json(p)
    assert recs == REAL
    s = data_stats.dataset_stats(recs)
    assert s["records"] == 2 and s["with_image"] == 1 and s["without_image"] == 1 and s["turns"] == 6
    assert s["types"] == {"unknown": 2}
    assert list(data.iter_llava_json(p)) == REAL  # not one-per-line: falls back to the full parse


def bad(recs):
    return json.dumps(recs)


@pytest.mark.parametrize("text, match", [
    (bad(REAL)[:-40], r"truncated JSON"),
    ('{"id": 1}', r"expected a JSON list"),
    (bad([REAL[1], {"id": "x", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nhi"}, {"from": "robot", "value": "x"}]}]),
     r"record 1 \(id 'x'\): turn 1 has unknown speaker 'robot'"),
    (bad([{"id": "y", "image": "a.png"}]), r"record 0 \(id 'y'\): missing or empty 'conversations'"),
    (bad([{"id": "z", "conversations": [{"from": "human"}]}]), r"record 0 .*turn 0 needs 'from' and 'value'"),
    (bad([{"id": "w", "conversations": [{"from": "human", "value": "<image>\nhi"}]}]),
     r"record 0 .*has '<image>' but no 'image'"),
    (bad([{"id": "v", "image": "a.png", "conversations": [{"from": "human", "value": "hi"}]}]),
     r"record 0 .*0 '<image>' tokens"),
    (bad([{"id": "u", "conversations": [{"from": "gpt", "value": "hi"}]}]), r"first turn must come from 'human'"),
    (bad([{"id": "t", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": " "}]}]),
     r"record 0 \(id 't'\): has no non-empty 'gpt' turn"),
])
def test_bad_files_name_file_and_record(tmp_path, text, match):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(ValueError, match=rf"bad.json.*{match}"):
        data.load_llava_json(p)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        data.load_llava_json(tmp_path / "nope.json")


def test_ensure_dataset_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_ARTIFACTS", str(tmp_path))
    cfg = data.DataConfig.for_profile("smoke", n_images=6, write_hf=False)
    p = data.ensure_dataset(cfg, progress=False)
    assert p.parent == tmp_path / "smoke" and (p / "config.json").is_file()
    mtime = (p / "llava_instruct.json").stat().st_mtime
    assert data.ensure_dataset(cfg, progress=False) == p
    assert (p / "llava_instruct.json").stat().st_mtime == mtime


def test_profiles():
    assert data.DataConfig.for_profile("smoke").n_images < data.DataConfig.for_profile("full").n_images
    assert data.DataConfig.for_profile("smoke", n_images=0).n_images == 60
    assert data.DataConfig.for_profile("full", n_images=None, resolution=32).world.resolution == 32
    with pytest.raises(ValueError, match="unknown profile"):
        data.DataConfig.for_profile("huge")
    with pytest.raises(ValueError, match="unknown teacher"):
        data.DataConfig(teacher="oracle")


def test_question_kinds():
    assert data_stats.question_kind("<image>\nHow many circles are there?") == "count"
    assert data_stats.question_kind("What colour is the square?") == "colour"
    assert data_stats.question_kind("Where is the dog?") == "position"
    assert data_stats.question_kind("Describe the image in detail.") == "description"


def test_plots_draw_from_stats(dataset):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from vlkit.plots import data as plots
    out, cfg, stats = dataset
    scenes = world.sample_scenes(2, 1, cfg.world)
    figs = [plots.scenes_with_contexts([world.render(s, 64) for s in scenes], ["a\n\nb: [0, 0, 1, 1]"] * 2),
            plots.type_mix(stats, target=data.LLAVA_MIX), plots.question_kinds(stats),
            plots.answer_lengths(stats)]
    assert len(figs[0].axes) == 4
    assert len(figs[1].axes[0].patches) == 2 * len(stats["types"])
    assert sum(p.get_width() for p in figs[2].axes[0].patches) == sum(stats["question_kinds"].values())
    assert sum(p.get_height() for p in figs[3].axes[0].patches) == sum(stats["answer_length_hist"]["counts"])
    for f in figs:
        plt.close(f)


def test_dataset_lengths_feed_length_grouping(tmp_path):
    from torch.utils.data import ConcatDataset

    from vlkit.llava_dataset import LlavaDataset
    from vlkit.train import example_lengths
    p = tmp_path / "real.json"
    p.write_text(json.dumps(REAL))
    ds = LlavaDataset(p)
    assert ds.lengths == [39, 18]  # words over all turns
    assert example_lengths(ConcatDataset([ds, ds])) == [39, 18, 39, 18]
    with pytest.raises(ValueError, match="group_by_length needs a dataset with .lengths"):
        example_lengths([1, 2, 3])
