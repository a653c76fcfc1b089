"""``vlkit data``: generate a dataset, turn one context into a record, summarise a LLaVA file (notebook 01).

    vlkit data generate --out DIR --n-images N [--seed S] [--teacher template|chat] [--resolution PX]
    vlkit data from-context FILE --kind conversation|detail|reasoning
    vlkit data stats FILE.json [--json]

Bad input raises :class:`vlkit.errors.UserError` (one line, exit status 2); a chat endpoint
that fails, redirects or answers out of format raises :class:`vlkit.errors.ServiceError`
(a :class:`vlkit.chat_client.ChatClientError`; one line, exit status 1). Neither leaves a
half-written dataset: ``generate`` builds in a temporary sibling folder and renames it into place.
"""
from __future__ import annotations

import json
from pathlib import Path

from vlkit.errors import ServiceError, UserError
from vlkit.teacher import KINDS


def _chat_kwargs(args) -> dict:
    return {"base_url": args.base_url, "model": args.model, "api_key_env": args.api_key_env}


def _teacher(args):
    """The teacher ``--teacher`` names; a chat teacher gets a client on ``--base-url``."""
    from vlkit.teacher import TemplateTeacher
    if args.teacher != "chat":
        return TemplateTeacher(args.seed)
    from vlkit.chat_client import ChatClient, missing_endpoint
    from vlkit.chat_teacher import ChatTeacher
    missing_endpoint(_chat_kwargs(args), "the chat teacher")
    return ChatTeacher(ChatClient(**_chat_kwargs(args)), seed=args.seed)


def cmd_generate(args) -> int:
    from vlkit import atomic, data

    cfg = data.DataConfig(profile="cli", n_images=args.n_images, seed=args.seed,
                          resolution=args.resolution, teacher=args.teacher,
                          samples_per_image=args.samples_per_image, write_hf=not args.no_hf,
                          **(_chat_kwargs(args) if args.teacher == "chat" else {}))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out}: folder is not empty (use --overwrite to replace it)")
    teacher = _teacher(args) if args.teacher == "chat" else None
    try:
        # Built in a temporary sibling and renamed into place: never half-written. A failing
        # endpoint (ChatClientError, a ServiceError) removes the sibling and propagates; an
        # existing --out folder is replaced only once the new one is complete.
        with atomic.atomic_dir(out) as tmp:
            stats = data.generate_dataset(tmp, cfg, progress=not args.quiet, teacher=teacher)
    except PermissionError:
        raise
    except OSError as e:
        raise UserError(f"{out}: cannot write the dataset here ({e})") from None
    print(f"wrote {out}: {stats['n_images']['train']} train / {stats['n_images']['val']} val / "
          f"{stats['n_images']['test']} test images, {stats['records']} training records "
          f"({stats['n_skipped_malformed']} malformed replies skipped)")
    return 0


def cmd_from_context(args) -> int:
    from vlkit.data import with_image_token
    from vlkit.teacher import parse_context

    path = Path(args.file)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    parse_context(text, source=str(path))  # errors name the file and line
    teacher = _teacher(args)
    turns = teacher.generate(text, args.kind, key=path.stem)  # ChatClientError propagates
    if turns is None:
        # The endpoint's fault, not the file's: a ServiceError (exit status 1).
        raise ServiceError(f"{path}: the chat teacher's reply was not in the expected format; "
                           "nothing written")
    record = {"id": path.stem, "image": args.image or f"{path.stem}.png", "type": args.kind,
              "conversations": with_image_token(turns)}
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return 0


def cmd_stats(args) -> int:
    from vlkit.data import load_llava_json
    from vlkit.data_stats import dataset_stats

    records = load_llava_json(args.file)
    stats = dataset_stats(records)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{args.file}")
    print(f"  records        {stats['records']}")
    print(f"  turns          {stats['turns']} ({stats['turns_per_record']} per record)")
    print(f"  with image     {stats['with_image']}")
    print(f"  without image  {stats['without_image']}")
    print("  types          " + ", ".join(f"{k} {v} ({stats['type_shares'][k]:.0%})"
                                          for k, v in stats["types"].items()))
    print("  question kinds " + ", ".join(f"{k} {v}" for k, v in stats["question_kinds"].items()))
    print(f"  answer words   mean {stats['answer_words_mean']}, max {stats['answer_words_max']}")
    return 0


def _add_chat_args(p) -> None:
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (chat teacher)")
    p.add_argument("--model", help="model name sent to the endpoint (chat teacher)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (the key itself is never printed)")


def register(sub) -> None:
    p = sub.add_parser("data", help="generate and inspect LLaVA-style instruction data (notebook 01)")
    dsub = p.add_subparsers(dest="data_command", required=True)

    g = dsub.add_parser("generate", help="render scenes and write a LLaVA dataset folder")
    g.add_argument("--out", required=True, help="output folder (written atomically)")
    g.add_argument("--n-images", type=int, required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--teacher", choices=("template", "chat"), default="template")
    g.add_argument("--resolution", type=int, default=64, help="image side in pixels")
    g.add_argument("--samples-per-image", type=int, default=2)
    g.add_argument("--no-hf", action="store_true", help="skip the Arrow copy under hf/")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_chat_args(g)
    g.set_defaults(func=cmd_generate)

    c = dsub.add_parser("from-context", help="print the LLaVA record a teacher makes from a context file")
    c.add_argument("file", help="text file: captions, a blank line, 'category: [x1, y1, x2, y2]' lines")
    c.add_argument("--kind", choices=KINDS, required=True)
    c.add_argument("--teacher", choices=("template", "chat"), default="template")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--image", help="value of the record's 'image' field (default: FILE's stem + .png)")
    _add_chat_args(c)
    c.set_defaults(func=cmd_from_context)

    s = dsub.add_parser("stats", help="summarise a LLaVA conversation JSON file")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    s.set_defaults(func=cmd_stats)
