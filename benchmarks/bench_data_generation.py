"""Benchmark: generate a LLaVA-scale instruction set (158K samples) with its images (notebook 01).

    python benchmarks/bench_data_generation.py                  # 158K samples, ~79K images
    python benchmarks/bench_data_generation.py --n-samples 10000

Writes everything ``generate_dataset`` writes (PNGs, scenes.jsonl, llava_instruct.json,
captions.json, the Arrow copy unless --no-hf) into a temporary folder that is deleted
afterwards, and reports wall time, samples/s and peak RSS of this process and of the
worker processes. Target: <= 120 s for 158K samples on 2 cores, memory flat (streamed).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlkit import data  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-samples", type=int, default=158_000)
    p.add_argument("--samples-per-image", type=int, default=2)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-hf", action="store_true", help="skip the Arrow copy")
    p.add_argument("--out", help="keep the result here instead of a temporary folder")
    args = p.parse_args()

    n_images = math.ceil(args.n_samples / args.samples_per_image)
    # All images in the train split, so every sample lands in llava_instruct.json.
    cfg = data.DataConfig(profile="bench", n_images=n_images, resolution=args.resolution,
                          samples_per_image=args.samples_per_image, val_frac=0.0, test_frac=0.0,
                          write_hf=not args.no_hf)
    tmp = tempfile.TemporaryDirectory(prefix="vlkit-bench-")
    out = Path(args.out) if args.out else Path(tmp.name) / "data"
    t0 = time.perf_counter()
    stats = data.generate_dataset(out, cfg, progress=True, workers=args.workers)
    seconds = time.perf_counter() - t0
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    # Deleting ~80K small files is slow on some file systems; it is not part of generation.
    t1 = time.perf_counter()
    tmp.cleanup()
    seconds_cleanup = time.perf_counter() - t1
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "samples": stats["records"],
        "images": n_images,
        "seconds": round(seconds, 1),
        "seconds_without_hf": stats["seconds_generate"],
        "samples_per_s": round(stats["records"] / seconds),
        "images_per_s": round(n_images / seconds),
        "peak_rss_mib_main": round(rss_self, 1),
        "peak_rss_mib_worker": round(rss_children, 1),
        "dataset_mib": round(size_mb, 1),
        "seconds_cleanup_not_counted": round(seconds_cleanup, 1),
        "types": stats["types"],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
