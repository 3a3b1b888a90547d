"""Check that the shell commands the quick start and the getting-started page show are ones
the project accepts: each `voxline ...` line parses with the CLI's own parser, each
`python scripts/X.py ...` line uses only flags its `--help` lists, and each script named
exists and is executable. Run by scripts/test.sh; exit 1 with the offending lines.

    python scripts/docs/check_commands.py [FILE[#HEADING]...]
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The README's quick start and the whole getting-started page.
PAGES = ["README.md#Quick start", "docs/getting-started.md"]
SHELLS = {"bash", "sh", "shell", "console"}
# Shell built-ins a shown command may use around the project's own commands.
BUILTINS = {"cd", "kill", "export", "wait"}


def shell_lines(text: str) -> Iterator[str]:
    """Every command line of the shell blocks of a Markdown text, continuations joined,
    comments removed."""
    in_block, pending = False, ""
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\w*)", line)
        if fence:
            in_block = not in_block and fence.group(1) in SHELLS
            continue
        if not in_block:
            continue
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if line:
            yield line


def section(text: str, heading: str) -> str:
    """The part of a Markdown text under a heading, up to the next one of its level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.M)
    if not match:
        raise SystemExit(f"no heading '{heading}'")
    level = len(match.group(1))
    end = re.search(rf"^#{{1,{level}}} ", text[match.end():], re.M)
    return text[match.end(): match.end() + end.start() if end else len(text)]


def problems(line: str) -> list[str]:
    """What is wrong with one shown command line ([] when the project accepts it)."""
    found = []
    for part in re.split(r"\s*(?:&&|\|\||;|&)\s*", line):
        words = shlex.split(part)
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value
            words.pop(0)
        if not words or words[0] in BUILTINS:
            continue
        program = words[0].removeprefix(".venv/bin/")
        if program == "voxline":
            found += _voxline(words[1:])
        elif program in ("python", "python3") and words[1:2] and words[1].endswith(".py"):
            found += _python_script(words[1], words[2:])
        elif program.startswith("scripts/"):
            found += _script(program)
        else:
            found.append(f"'{program}' is not one of the project's commands")
    return found


def _voxline(args: list[str]) -> list[str]:
    from voxline.cli_parser import build_parser, commands

    def refuse(message: str):
        raise ValueError(message)

    parser = build_parser()
    for command in commands(parser):  # raise instead of printing usage and exiting
        command.error = refuse
    try:
        parser.parse_args(args)
    except ValueError as error:
        return [f"voxline {' '.join(args)}: {error}"]
    return []


def _script(path: str) -> list[str]:
    file = ROOT / path
    if not file.is_file():
        return [f"{path}: no such script"]
    if file.suffix == ".sh" and not file.stat().st_mode & 0o111:
        return [f"{path}: not executable"]
    return []


def _python_script(path: str, args: list[str]) -> list[str]:
    missing = _script(path)
    if missing:
        return missing
    shown = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if not shown:
        return []
    help_text = subprocess.run([sys.executable, str(ROOT / path), "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=120).stdout
    return [f"{path}: its --help has no {flag}" for flag in sorted(shown)
            if not re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", help_text)]


def check(pages: list[str]) -> list[str]:
    found = []
    for page in pages:
        name, _, heading = page.partition("#")
        text = (ROOT / name).read_text()
        lines = list(shell_lines(section(text, heading) if heading else text))
        if not lines:
            found.append(f"{page}: no shell commands found")
        found += [f"{page}: {p}" for line in lines for p in problems(line)]
    return found


if __name__ == "__main__":
    errors = check(sys.argv[1:] or PAGES)
    print("\n".join(errors) or "every documented command is accepted")
    sys.exit(1 if errors else 0)
