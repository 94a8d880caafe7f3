"""The ``pipstrack`` command line.

Every command reports bad input as one line on stderr (``pipstrack: error: ...``) and a
non-zero exit status: 2 for a usage or input problem, 1 for a failure while working,
130 when interrupted. Each command lives in a module of this package with its parser
(``add_parsers``); modules import the heavy parts (torch, OpenCV) only when a command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import export, models, service, tracking
from .common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, CliError

COMMANDS = (tracking, models, service, export)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="pipstrack", description="PIPs point tracking for compositors.")
    p.add_argument("--version", action="version", version=f"pipstrack {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more (to stderr)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parsers(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if getattr(args, "working_size", None) == 0:
        args.working_size = None
    from ..engine.weights import WeightsError
    from ..io.frames import FrameReadError

    try:
        return args.func(args)
    except CliError as e:
        print(f"pipstrack: error: {e}", file=sys.stderr)
        return e.code
    except (FileNotFoundError, ValueError, WeightsError) as e:
        print(f"pipstrack: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FrameReadError as e:
        print(f"pipstrack: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("pipstrack: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like, which stopped reading
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
