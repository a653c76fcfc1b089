"""Results tables a paper reader recognises, from result files (notebooks 03-08).

Rows are variants (one training seed each, or the mean over seeds), then the baselines;
columns are ScienceQA's (NAT SOC LAN TXT IMG NO G1-6 G7-12 Avg), ``Binding`` and ``Rel. score``.
"""
from __future__ import annotations

import pandas as pd

from vlkit.benchmarks import llava_bench as lb
from vlkit.benchmarks import scienceqa as sqa
from vlkit.stats import mean_sd

COLUMNS = (*sqa.COLUMNS, "Binding", "Rel. score")


def _row(result: dict) -> dict:
    m = result["metrics"]
    return {**{c: m["ScienceQA"][c] for c in sqa.COLUMNS}, "Binding": m["Binding"],
            "Rel. score": (m.get("Rel. score") or {}).get("overall", {}).get("relative")}


def results_table(results: list[dict], seed: int | None = None, blind_of: str | None = None) -> pd.DataFrame:
    """LLaVA-style table: one row per variant at training seed ``seed`` (default: each variant's
    first), the image-blind row of ``blind_of`` (default: the first variant), chance and the bag of
    attributes (notebook 03)."""
    rows, first = {}, None
    for r in results:
        if (seed is None and r["variant"] in rows) or (seed is not None and r["train_seed"] != seed):
            continue
        rows[r["variant"]] = _row(r)
        first = first or r
    blind = next((r for r in results if r["variant"] == (blind_of or first["variant"])
                  and r["baselines"]["ScienceQA"]["image_blind"] and (seed is None or r["train_seed"] == seed)), None)
    if blind is not None:
        b = blind["baselines"]
        rows[f"{blind['variant']}, image blind"] = {**{c: b["ScienceQA"]["image_blind"][c] for c in sqa.COLUMNS},
                                                    "Binding": b["Binding"]["image_blind"], "Rel. score": None}
    b = first["baselines"]
    rows["chance"] = {**b["ScienceQA"]["chance"], "Binding": b["Binding"]["chance"], "Rel. score": None}
    rows["bag of attributes"] = {"Binding": b["Binding"]["bag_of_attributes"]}
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(COLUMNS)).astype(float).round(2)


def seeds_table(results: list[dict], variant: str, columns: tuple[str, ...] = ("Avg", "IMG", "NO", "Binding"),
                blind: bool = True) -> pd.DataFrame:
    """One row per training seed of ``variant`` (and its image-blind IMG / Binding), then mean and sd."""
    rows = {}
    for r in sorted((r for r in results if r["variant"] == variant), key=lambda r: r["train_seed"]):
        row = {c: _row(r)[c] for c in columns}
        ib = r["baselines"]["ScienceQA"]["image_blind"]
        if blind and ib:
            row.update({"IMG, image blind": ib["IMG"], "Binding, image blind": r["baselines"]["Binding"]["image_blind"]})
        rows[f"seed {r['train_seed']}"] = row
    if not rows:
        raise ValueError(f"no results of variant {variant!r}")
    table = pd.DataFrame.from_dict(rows, orient="index").astype(float)
    if len(table) > 1:
        stats = {c: mean_sd(table[c].dropna().tolist()) for c in table.columns}
        table.loc["mean"] = {c: m for c, (m, _) in stats.items()}
        table.loc["sd"] = {c: s for c, (_, s) in stats.items()}
    return table.round(2)


def relative_table(results: list[dict]) -> pd.DataFrame:
    """Relative score (%) per question type and overall, one row per variant (first seed) (notebook 03)."""
    types = [*lb.TYPES, "overall"]
    rows = {}
    for r in results:
        if r["variant"] not in rows and r["metrics"].get("Rel. score"):
            rows[r["variant"]] = {t: r["metrics"]["Rel. score"].get(t, {}).get("relative") for t in types}
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=types).astype(float).round(1)


def efficiency_table(results: list[dict]) -> pd.DataFrame:
    """What each row costs and buys, one row per variant (its first training seed) (notebook 04).

    Trainable parameters (and % of all), training seconds per step, peak training memory of the last
    stage (the method is in each result's ``training.stages[].memory_method``), bytes of the trained
    tensors, and ScienceQA Avg / IMG / TXT / NO / binding.
    """
    rows = {}
    for r in results:
        if r["variant"] in rows:
            continue
        p, last = r["parameters"], r["training"]["stages"][-1]
        sq = r["metrics"]["ScienceQA"]
        rows[r["variant"]] = {
            "trainable": p["trainable"], "% of all": 100 * p["trainable"] / p["total"],
            "ms / step": 1000 * r["training"]["seconds_per_step"],
            "peak MiB": None if last["peak_memory_bytes"] is None else last["peak_memory_bytes"] / 2 ** 20,
            "trained KiB": r["weight_bytes"]["trained"] / 2 ** 10,
            **{c: sq[c] for c in ("Avg", "IMG", "TXT", "NO")}, "Binding": r["metrics"]["Binding"]}
    return pd.DataFrame.from_dict(rows, orient="index").astype(float).round(2)


def category_table(results: list[dict], cells: dict[str, tuple], columns=("NAT", "SOC", "LAN", "TXT", "IMG", "NO")
                   ) -> pd.DataFrame:
    """Per-context-category accuracy of the variants in ``cells`` (variant -> a cell, e.g. (rank, groups)),
    first training seed, long format: one row per (cell, category) (notebook 04)."""
    out = []
    for r in results:
        if r["variant"] in cells and not any(o["variant"] == r["variant"] for o in out):
            for c in columns:
                out.append({"variant": r["variant"], "cell": cells[r["variant"]], "category": c,
                            "accuracy": r["metrics"]["ScienceQA"][c]})
    return pd.DataFrame(out)


def means_table(results: list[dict], columns: tuple[str, ...] = ("Avg", "IMG", "TXT", "NO", "Binding", "Rel. score")
                ) -> pd.DataFrame:
    """One row per variant: the mean of each column over its training seeds, with the seeds' sd of Avg
    and their count (notebook 05's before / after table)."""
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["variant"], []).append(_row(r))
    rows = {}
    for variant, rs in by.items():
        row = {c: mean_sd([x[c] for x in rs if x[c] is not None])[0] if any(x[c] is not None for x in rs) else None
               for c in columns}
        row.update({"Avg sd": mean_sd([x["Avg"] for x in rs])[1], "seeds": len(rs)})
        rows[variant] = row
    return pd.DataFrame.from_dict(rows, orient="index").astype(float).round(2)
