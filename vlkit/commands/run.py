"""``vlkit run``: every notebook headless with papermill (see :mod:`vlkit.runs`)."""
from __future__ import annotations

import sys

from vlkit import parameters, runs


def register(sub) -> None:
    p = sub.add_parser("run", help="execute the notebooks headless into papermill_runs/<run>/")
    p.add_argument("--profile", default="full", choices=parameters.PROFILES,
                   help="smoke: seconds per notebook (CI); full: the default pipeline")
    p.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers to run, e.g. 01 03")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"),
                   help="notebook parameter (repeatable); its value must fit the type of the "
                        "notebook's default; the profile is --profile's")
    # a hang guard, not a budget: notebook 03 takes ~45 min on a 2-core CPU without native bf16
    p.add_argument("--timeout", type=float, default=7200,
                   help="seconds allowed per notebook (positive)")
    p.add_argument("--notebooks", default=None, help="folder of NN_*.ipynb (default notebooks/)")
    p.add_argument("--runs-dir", default=None, help="where run folders go (default papermill_runs/)")
    p.add_argument("--dry-run", action="store_true",
                   help="list what each notebook would build, train and evaluate, and what is cached; run nothing")
    p.set_defaults(func=main)


def main(args) -> int:
    runs.check_timeout(args.timeout)  # bad input is refused before anything else, dry run or not
    params = {name: parameters.parse_value(value) for name, value in args.parameter}
    if args.dry_run:
        print("\n".join(runs.dry_run(args.profile, args.only, params, args.notebooks)))
        return 0
    try:
        run_dir, record = runs.run_pipeline(args.profile, args.only, params, args.notebooks,
                                            args.runs_dir, args.timeout)
    except runs.Interrupted as e:  # Ctrl-C or SIGTERM: the notebook is stopped, the run recorded
        print(f"vlkit run: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    print(f"run {record['status']}: {run_dir} ({record['seconds']:.0f} s)")
    return 0 if record["status"] == "ok" else 1
