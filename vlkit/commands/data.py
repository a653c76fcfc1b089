"""``vlkit data``: placeholder, registered so the CLI imports cleanly."""


def register(sub):
    p = sub.add_parser("data", help="(not yet implemented)")
    p.set_defaults(func=lambda args: print("not yet implemented") or 1)
