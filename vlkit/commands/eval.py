"""``vlkit eval``: score benchmarks in their public formats (notebook 03).

    vlkit eval scienceqa --problems problems.json --predictions FILE [--split test] [--json]
    vlkit eval generate-scienceqa --out DIR [--n N] [--seed S] [--resolution PX]
    vlkit eval llava-bench --questions Q.jsonl --answers A.jsonl [--reference R.jsonl] [--json]
"""
from __future__ import annotations

import json
import math

from vlkit.errors import UserError


def _scienceqa(args) -> int:
    from vlkit.benchmarks import scienceqa as sqa
    problems = sqa.load_problems(args.problems, check_images=False if args.no_image_check else None)
    preds = sqa.load_predictions(args.predictions, problems)
    if args.split and preds and not any(problems[pid]["split"] == args.split for pid in preds):
        theirs = sorted({problems[pid]["split"] for pid in preds})
        raise UserError(f"{args.predictions}: none of its {len(preds)} predictions is for a problem of split "
                        f"{args.split!r} (they are for {', '.join(theirs)}); pass --split {theirs[0]}")
    scores = sqa.score(problems, preds, split=args.split)
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        print(sqa.format_table(scores))
    return 0


def _generate(args) -> int:
    from vlkit.benchmarks import scienceqa as sqa
    from vlkit.world.scienceqa import ScienceQAConfig, write_benchmark
    cfg = ScienceQAConfig(n_problems=args.n, seed=args.seed, resolution=args.resolution)
    out = write_benchmark(args.out, cfg)
    problems = sqa.load_problems(out)
    counts = {s: len(sqa.select(problems, split=s)) for s in sqa.SPLITS}
    print(f"wrote {len(problems)} problems to {out} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return 0


def _llava_bench(args) -> int:
    from vlkit.benchmarks import llava_bench as lb
    records = lb.load_bench(args.questions, args.answers, args.reference)
    if args.judge == "chat":
        from vlkit.chat_client import ChatClient, missing_endpoint
        endpoint = {"base_url": args.base_url, "model": args.model, "api_key_env": args.api_key_env}
        missing_endpoint(endpoint, "the chat judge")
        judge = lb.ChatJudge(ChatClient(**endpoint))
    else:
        judge = lb.RuleJudge()
    scores = lb.relative_scores(lb.evaluate(records, judge))
    if args.json:
        print(json.dumps(scores, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    else:
        print(lb.format_relative(scores))
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="score benchmarks (ScienceQA format, LLaVA-Bench relative score)")
    ev = p.add_subparsers(dest="eval_command", required=True)

    s = ev.add_parser("scienceqa", help="accuracy in ScienceQA's columns (NAT SOC LAN TXT IMG NO G1-6 G7-12 Avg)")
    s.add_argument("--problems", required=True, help="ScienceQA problems.json (or the folder holding it)")
    s.add_argument("--predictions", required=True,
                   help='ScienceQA result JSON {"results": {pid: index}} or LLaVA answers JSONL')
    s.add_argument("--split", default="test", choices=("train", "val", "test"))
    s.add_argument("--json", action="store_true", help="print the scores as JSON")
    s.add_argument("--no-image-check", action="store_true", help="do not check that image files exist")
    s.set_defaults(func=_scienceqa)

    g = ev.add_parser("generate-scienceqa", help="write a ScienceQA-format benchmark from world scenes")
    g.add_argument("--out", required=True, help="output folder (problems.json, pid_splits.json, images/)")
    g.add_argument("--n", type=int, default=1200, help="number of problems")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resolution", type=int, default=64, help="image side in pixels")
    g.set_defaults(func=_generate)

    b = ev.add_parser("llava-bench", help="LLaVA-Bench-style relative score (model vs reference)")
    b.add_argument("--questions", required=True,
                   help="JSONL: question_id, text, category (conv|detail|complex), context[, reference]")
    b.add_argument("--answers", required=True, help="model answers JSONL: question_id, text")
    b.add_argument("--reference", help="reference answers JSONL (default: 'reference' in the questions)")
    b.add_argument("--judge", default="rule", choices=("rule", "chat"))
    b.add_argument("--base-url", help="chat judge: OpenAI-compatible endpoint")
    b.add_argument("--model", help="chat judge: model name")
    b.add_argument("--api-key-env", default="OPENAI_API_KEY", help="chat judge: env var holding the key")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_llava_bench)
