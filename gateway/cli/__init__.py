"""The `gateway` command: serve, token, check-config, users, apikey, admin, webui, doctor,
bench."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gateway.cli.parser import parser
from gateway.settings import SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    # `gateway bench` hands every argument after it to `python -m bench`, which
    # owns them (and its own --help); every other command takes only its own.
    args, rest = top.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = rest
    elif rest:
        top.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        result: int = args.run(args)
    except SettingsError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
