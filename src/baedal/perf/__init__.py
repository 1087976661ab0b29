"""``baedal perf``: an AMQP 0-9-1 load generator for any broker (see ``options`` for the flags).

    python -m baedal.perf --uri amqp://guest:guest@127.0.0.1:5672/ -x 1 -y 1 -z 10
    python -m baedal.perf --scenario S3 --json

Exit status: 0 when the run went through cleanly (nothing lost, no errors), 1 when it
ran but something went wrong (lost messages, a refused method, a timeout), 2 on a bad
command line or when the broker cannot be reached.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from . import report, runner
    from .client import AMQPError
    from .options import UsageError, parse_args

    try:
        settings = parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(f"baedal perf: {exc}\n")
        return 2
    except SystemExit as exc:  # argparse: --help or a bad flag
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    try:
        result = runner.run(settings, progress=sys.stderr)
    except (AMQPError, OSError, TimeoutError) as exc:
        sys.stderr.write(
            f"baedal perf: cannot run against {settings.uri}: {exc or type(exc).__name__}\n"
        )
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("baedal perf: interrupted\n")
        return 130
    if settings.json:
        report.print_summary(result, sys.stderr)
        report.print_json(result, sys.stdout)
    else:
        report.print_summary(result, sys.stdout)
    return 0 if result.get("ok") else 1
