"""The ``certaindex`` command line. One module per command group (:mod:`.solve`, :mod:`.traces`,
:mod:`.serving`, :mod:`.serve`) over one shared-options module (:mod:`.common`) that imports none of them.

User mistakes and engine failures end with one ``error:`` line and a nonzero exit, never a
traceback: 2 for bad input, 1 for an engine that fails, 3 when the model gives no answer.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from certaindex import __version__
from certaindex.cli import demo, replay_server, sampling, serve, serving, solve, traces
from certaindex.cli.common import run_handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certaindex", description="Stop LLM reasoning once its answer has settled (Dynasor-CoT early exit)."
    )
    parser.add_argument("--version", action="version", version=f"certaindex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_subcommands(sub)  # demo: replay on shipped real traces
    solve.add_subcommands(sub)  # solve, bench
    traces.add_subcommands(sub)  # record, calibrate, evaluate
    serve.add_serve_subcommand(sub)  # serve
    serving.add_subcommands(sub)  # loadtest, simulate
    sampling.add_subcommands(sub)  # evaluate-sc
    replay_server.add_subcommands(sub)  # replay-server
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_handler(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
