"""The command-line reference page: `voxline --help` and the help of every command, from
the parser itself (`voxline.cli_parser`), so the page cannot drift from the CLI.
`python scripts/docs/cli_reference.py` prints the page.
"""

from __future__ import annotations

import os
import sys

# argparse wraps help to the terminal's width: fix it so every build writes the same page.
WIDTH = "96"


def render() -> str:
    from voxline.cli_parser import build_parser, commands

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        out = ["# Command-line reference", "",
               "Generated from `voxline`'s own argument parser at each documentation build. "
               "Installed by `scripts/setup.sh` as `.venv/bin/voxline`. What the commands are "
               "for, with examples: [Getting started](../getting-started.md).", ""]
        for parser in commands(build_parser()):
            out += [f"## `{parser.prog}`", "", "```text", parser.format_help().rstrip(), "```",
                    ""]
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
