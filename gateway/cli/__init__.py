"""The `gateway` command: serve, token, check-config, users, apikey, admin, webui, doctor."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gateway.cli.parser import parser
from gateway.settings import SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except SettingsError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
