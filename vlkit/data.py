"""The instruction dataset on disk: generation and loading (notebook 01; statistics in :mod:`vlkit.data_stats`).

``generate_dataset`` renders scenes of :mod:`vlkit.world`, writes their symbolic contexts
through a teacher (:mod:`vlkit.teacher`) into LLaVA's conversation JSON, and lays out one
folder that every later notebook reads::

    images/<id>.png
    scenes.jsonl          ground truth per image + {"image", "split"}
    llava_instruct.json   LLaVA conversation JSON (conversation / detail / reasoning), train split
    captions.json         stage-1 caption data in LLaVA's pretrain format, train split
    hf/                   datasets.DatasetDict (Arrow): train / validation / test / captions
    stats.json

Everything is streamed to disk as it is made, so memory stays flat however many samples
are written; rendering and the template teacher run in worker processes.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import numbers
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlkit import atomic, cache, paths, world
from vlkit.data_stats import StatsAccumulator
from vlkit.errors import UserError
from vlkit.teacher import KINDS, make_teacher
from vlkit.tokens import IMAGE_TOKEN

# LLaVA-Instruct-158K: 58K conversations, 23K detailed descriptions, 77K complex reasoning.
LLAVA_MIX = {"conversation": 58, "detail": 23, "reasoning": 77}
SPEAKERS = ("human", "gpt")
# Stage-1 prompts, in the spirit of LLaVA's "describe the image briefly" list.
BRIEF_PROMPTS = (
    "Describe the image briefly.",
    "Give a short caption for this image.",
    "What does the image show? Answer in one sentence.",
    "Summarize the picture in a few words.",
    "Write a brief description of the image.",
    "Provide a one-sentence caption of the image.",
)


@dataclass
class DataConfig:
    """What ``ensure_dataset`` builds (notebook 01).

    ``samples_per_image`` instruction samples are drawn per training image, each of a type
    drawn with LLaVA's 58 : 23 : 77 mix. The last ``val_frac`` / ``test_frac`` of the images
    are held out (their samples go to ``hf/validation`` and ``hf/test`` only).
    """

    profile: str = "full"
    n_images: int = 6000
    seed: int = 0
    resolution: int = 64
    teacher: str = "template"
    samples_per_image: int = 2
    mix: dict[str, int] = field(default_factory=lambda: dict(LLAVA_MIX))
    val_frac: float = 0.1
    test_frac: float = 0.1
    world: world.WorldConfig = field(default_factory=world.WorldConfig)
    write_hf: bool = True
    # Only for teacher="chat": an OpenAI-compatible endpoint; the key stays in the environment.
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"

    PROFILES = {"smoke": {"n_images": 60}, "full": {"n_images": 6000}}

    def __post_init__(self):
        if isinstance(self.world, dict):
            self.world = world.WorldConfig(**self.world)
        self.world = dataclasses.replace(self.world, resolution=self.resolution)
        # UserError (a ValueError): the CLI prints it as one line naming the value, exit status 2.
        for name in ("n_images", "samples_per_image"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
                raise UserError(f"{name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.resolution, numbers.Integral) or self.resolution < 8:
            raise UserError(f"resolution must be >= 8 px, got {self.resolution!r}")
        if not isinstance(self.mix, dict) or set(self.mix) - set(KINDS) or not any(self.mix.values()) \
                or any(not isinstance(w, numbers.Real) or w < 0 for w in self.mix.values()):
            raise UserError(f"mix must give weights >= 0 to some of {KINDS}, got {self.mix!r}")
        if self.teacher not in ("template", "chat"):
            raise UserError(f"unknown teacher {self.teacher!r}; expected 'template' or 'chat'")
        if not (0 <= self.val_frac and 0 <= self.test_frac and self.val_frac + self.test_frac < 1):
            raise UserError("val_frac and test_frac must be >= 0 and sum to less than 1, got "
                            f"{self.val_frac!r} and {self.test_frac!r}")
        self.n_val = round(self.n_images * self.val_frac)
        self.n_test = round(self.n_images * self.test_frac)
        self.n_train = self.n_images - self.n_val - self.n_test

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> "DataConfig":
        """Sizes for ``smoke`` (~60 images, seconds) or ``full`` (6000 images); None/0 keep the default."""
        if profile not in cls.PROFILES:
            raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(cls.PROFILES)}")
        kw = dict(cls.PROFILES[profile])
        for k, v in overrides.items():
            if v is None or (k == "n_images" and v == 0):
                continue  # notebooks pass None/0 for "the profile's default"
            kw[k] = v
        return cls(profile=profile, **kw)

    def split_of(self, index: int) -> str:
        return "train" if index < self.n_train else "val" if index < self.n_train + self.n_val else "test"


# ------------------------------------------------------------------------------ generation

def with_image_token(turns: list[dict]) -> list[dict]:
    """Put ``<image>`` on its own line before the first human turn (LLaVA's layout)."""
    out = [dict(t) for t in turns]
    out[0]["value"] = f"{IMAGE_TOKEN}\n{out[0]['value']}"
    return out


def _kinds(cfg: DataConfig, index: int) -> list[str]:
    rng = random.Random(f"vlkit-kind:{cfg.seed}:{index}")
    names = [k for k in KINDS if cfg.mix.get(k)]
    return rng.choices(names, weights=[cfg.mix[k] for k in names], k=cfg.samples_per_image)


_WORKER_TEACHER = {}


def _make_image(cfg: DataConfig, index: int, out_dir: Path, teacher) -> dict:
    """Render image ``index``, write its PNG, and make its records (JSON strings)."""
    sid = world.scene_id(cfg.seed, index)
    scene = world.sample_scene(world.scene_rng(cfg.seed, index), cfg.world, sid)
    rel = f"images/{sid}.png"
    # compress_level=1: 64 px PNGs are a few hundred bytes anyway; level 6 only costs time.
    world.render(scene, cfg.resolution).save(out_dir / rel, compress_level=1)
    rng = random.Random(f"vlkit-context:{cfg.seed}:{index}")
    context = world.symbolic_context(scene, rng)
    split = cfg.split_of(index)
    records, skipped = [], 0
    acc = StatsAccumulator()  # statistics of training records, merged by the parent
    for k, kind in enumerate(_kinds(cfg, index)):
        turns = teacher.generate(context, kind, key=f"{sid}:{k}")
        if turns is None:  # a malformed chat reply: counted by the teacher, never written
            skipped += 1
            continue
        rec = {"id": f"{sid}_{k}", "image": rel, "type": kind, "conversations": with_image_token(turns)}
        if split == "train":
            acc.add(rec)
        records.append(json.dumps(rec, ensure_ascii=False))
    cap = json.dumps({"id": sid, "image": rel, "conversations": [
        {"from": "human", "value": f"{IMAGE_TOKEN}\n{rng.choice(BRIEF_PROMPTS)}"},
        {"from": "gpt", "value": rng.choice(context.split("\n\n")[0].splitlines())}]})
    scene_line = json.dumps({**scene.to_dict(), "image": rel, "split": split, "context": context})
    return {"split": split, "scene": scene_line, "records": records, "caption": cap,
            "skipped": skipped, "stats": acc}


def _make_chunk(args) -> list[dict]:
    cfg, start, stop, out_dir = args
    teacher = _WORKER_TEACHER.get(cfg.seed)
    if teacher is None:
        teacher = _WORKER_TEACHER[cfg.seed] = make_teacher("template", cfg.seed)
    return [_make_image(cfg, i, Path(out_dir), teacher) for i in range(start, stop)]


class _JsonArrayWriter:
    """Writes a JSON array one element at a time (flat memory)."""

    def __init__(self, f):
        self.f, self.n = f, 0
        f.write("[\n")

    def add(self, item_json: str):
        self.f.write((",\n" if self.n else "") + item_json)
        self.n += 1

    def close(self):
        self.f.write("\n]\n")


def generate_dataset(out_dir: str | Path, cfg: DataConfig, progress: bool = True,
                     workers: int = 2, teacher=None) -> dict:
    """Write the dataset folder into ``out_dir`` and return its statistics (notebook 01).

    The caller makes it atomic (``ensure_dataset`` and the CLI build into a temporary
    folder). ``teacher`` overrides ``cfg.teacher`` (e.g. a ChatTeacher built by the caller);
    the template teacher runs inside ``workers`` processes, a chat teacher in this one.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if teacher is None and cfg.teacher == "chat":
        teacher = make_teacher("chat", cfg.seed, base_url=cfg.base_url, model=cfg.model,
                               api_key_env=cfg.api_key_env)
    # Chunks big enough to amortise inter-process traffic, small enough to keep both workers busy.
    chunk = max(16, min(250, cfg.n_images // (4 * max(workers, 1)) or 1))
    jobs = [(cfg, s, min(s + chunk, cfg.n_images), str(out)) for s in range(0, cfg.n_images, chunk)]
    split_files = {s: open(out / f".records-{s}.jsonl", "w", encoding="utf-8") for s in ("train", "val", "test")}
    n_images = {"train": 0, "val": 0, "test": 0}
    n_records = {"train": 0, "val": 0, "test": 0}
    skipped = 0
    train_stats = StatsAccumulator()
    pool = None
    try:
        if teacher is not None or workers <= 1 or len(jobs) == 1:
            if teacher is None:
                teacher = make_teacher("template", cfg.seed)
            results = ([_make_image(cfg, i, out, teacher) for i in range(s, e)] for _, s, e, _ in jobs)
        else:
            pool = mp.get_context("fork").Pool(workers)
            results = pool.imap(_make_chunk, jobs)
        with open(out / "scenes.jsonl", "w", encoding="utf-8") as scenes_f, \
                open(out / "llava_instruct.json", "w", encoding="utf-8") as instr_f, \
                open(out / "captions.json", "w", encoding="utf-8") as cap_f:
            instr, caps = _JsonArrayWriter(instr_f), _JsonArrayWriter(cap_f)
            bar = tqdm(total=cfg.n_images, desc="images", unit="img", disable=not progress)
            for items in results:
                for it in items:
                    split = it["split"]
                    scenes_f.write(it["scene"] + "\n")
                    n_images[split] += 1
                    skipped += it["skipped"]
                    for r in it["records"]:
                        split_files[split].write(r + "\n")
                        n_records[split] += 1
                        if split == "train":
                            instr.add(r)
                    train_stats.merge(it["stats"])
                    if split == "train":
                        caps.add(it["caption"])
                bar.update(len(items))
            bar.close()
            instr.close()
            caps.close()
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        for f in split_files.values():
            f.close()
    t_gen = time.perf_counter() - t0
    if cfg.write_hf:
        _write_hf(out, progress)
    for s in split_files:
        (out / f".records-{s}.jsonl").unlink()
    stats = {
        **train_stats.result(),
        "n_images": n_images,
        "n_records_per_split": n_records,
        "n_skipped_malformed": skipped,
        "teacher": cfg.teacher,
        "seconds_generate": round(t_gen, 2),
        "seconds_total": round(time.perf_counter() - t0, 2),
    }
    if cfg.teacher == "chat":
        stats["n_requests"] = getattr(teacher, "n_requests", 0)
    atomic.write_json(out / "stats.json", stats)
    return stats


def _write_hf(out: Path, progress: bool) -> None:
    """``hf/``: a DatasetDict saved with ``save_to_disk`` (Arrow), read from the streamed files."""
    import datasets

    if not progress:
        datasets.disable_progress_bars()
    conv = datasets.List({"from": datasets.Value("string"), "value": datasets.Value("string")})
    feats = datasets.Features({"id": datasets.Value("string"), "image": datasets.Value("string"),
                               "type": datasets.Value("string"), "conversations": conv})
    tmp_cache = out / ".hf-cache"
    files = {"train": ".records-train.jsonl", "validation": ".records-val.jsonl",
             "test": ".records-test.jsonl", "captions": "captions.json"}
    parts = {}
    try:
        for name, fname in files.items():
            path = out / fname
            if name == "captions":  # a JSON array: rewrite as JSON lines with type "caption"
                path = out / ".records-captions.jsonl"
                with open(path, "w", encoding="utf-8") as f:
                    for r in iter_llava_json(out / fname):
                        f.write(json.dumps({**r, "type": "caption"}) + "\n")
            if path.stat().st_size == 0:
                parts[name] = datasets.Dataset.from_dict(
                    {"id": [], "image": [], "type": [], "conversations": []}, features=feats)
            else:  # a generator keeps memory flat: Arrow batches are written as they fill
                parts[name] = datasets.Dataset.from_generator(
                    _jsonl_rows, features=feats, cache_dir=str(tmp_cache),
                    gen_kwargs={"path": str(path)}, writer_batch_size=2000)
        datasets.DatasetDict(parts).save_to_disk(str(out / "hf"))
    finally:
        shutil.rmtree(tmp_cache, ignore_errors=True)
        (out / ".records-captions.jsonl").unlink(missing_ok=True)
        if not progress:
            datasets.enable_progress_bars()


def _jsonl_rows(path: str):
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            yield {"id": r["id"], "image": r["image"], "type": r["type"], "conversations": r["conversations"]}


def ensure_dataset(cfg: DataConfig, progress: bool = True) -> Path:
    """The dataset folder for ``cfg`` under ``artifacts/<profile>/``, built when missing (notebook 01)."""
    return cache.cached(paths.artifacts_dir(cfg.profile), "data", cfg,
                        lambda tmp: generate_dataset(tmp, cfg, progress=progress))


def load_scenes(data_dir: str | Path, split: str | None = None) -> list[tuple[world.Scene, dict]]:
    """``scenes.jsonl`` -> [(Scene, row)], optionally one split (notebook 01)."""
    out = []
    path = Path(data_dir) / "scenes.jsonl"
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                scene = world.Scene.from_dict(row)
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}, line {n}: not a scene record ({e})") from None
            if split is None or row.get("split") == split:
                out.append((scene, row))
    return out


# ------------------------------------------------------------------------------- loading

def _check_record(rec, path, i) -> dict:
    where = f"{path}: record {i}"
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected an object, got {type(rec).__name__}")
    if "id" in rec:
        where += f" (id {rec['id']!r})"
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"{where}: missing or empty 'conversations' list")
    if "image" in rec and not isinstance(rec["image"], str):
        raise ValueError(f"{where}: 'image' must be a string path, got {type(rec['image']).__name__}")
    n_tokens = 0
    for j, t in enumerate(conv):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise ValueError(f"{where}: turn {j} needs 'from' and 'value'")
        if t["from"] not in SPEAKERS:
            raise ValueError(f"{where}: turn {j} has unknown speaker {t['from']!r}; expected 'human' or 'gpt'")
        if not isinstance(t["value"], str):
            raise ValueError(f"{where}: turn {j} 'value' must be a string")
        n_tokens += t["value"].count(IMAGE_TOKEN)
    if conv[0]["from"] != "human":
        raise ValueError(f"{where}: the first turn must come from 'human'")
    if "image" in rec and n_tokens != 1:
        raise ValueError(f"{where}: has an image but {n_tokens} '{IMAGE_TOKEN}' tokens (expected 1)")
    if "image" not in rec and n_tokens:
        raise ValueError(f"{where}: has '{IMAGE_TOKEN}' but no 'image'")
    if not any(t["from"] == "gpt" and t["value"].strip() for t in conv):
        # nothing to learn from: a batch of such records has no labelled token and a NaN loss
        raise ValueError(f"{where}: has no non-empty 'gpt' turn (nothing for the model to learn)")
    return rec


def load_llava_json(path: str | Path) -> list[dict]:
    """Read and validate a LLaVA conversation JSON file (ours or a real one) (notebook 01).

    Accepts multi-turn records and text-only records (no ``image``). Raises
    FileNotFoundError, or ValueError naming the file and record: truncated JSON, a turn
    from an unknown speaker, missing fields, ``<image>`` without an image or vice versa.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        kind = "truncated" if not text.rstrip().endswith(("]", "}")) else "invalid"
        raise ValueError(f"{path}: {kind} JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return [_check_record(r, path, i) for i, r in enumerate(data)]


def iter_llava_json(path: str | Path):
    """Iterate the records of a LLaVA JSON file written by this module, one line each.

    Our writer puts one record per line, so big files stream without loading the whole
    array; any other layout falls back to :func:`load_llava_json`.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        first = f.readline().strip()
        if first != "[":
            yield from load_llava_json(path)
            return
        for i, line in enumerate(f):
            line = line.strip().rstrip(",")
            if line in ("", "]"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                yield from load_llava_json(path)[i:]
                return
            yield _check_record(rec, path, i)
