"""MkDocs hooks (mkdocs.yml `hooks:`): the pages generated from the code at every build —
the configuration reference (pydantic settings), the command-line reference (the CLI's
parser), the gRPC API reference (the proto's comments) — and the changelog, read from
CHANGELOG.md at the top of the checkout. Nothing generated is committed, so nothing can
go stale.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _render(module: str) -> str:
    spec = importlib.util.spec_from_file_location(f"voxline_docs_{module}", HERE / f"{module}.py")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded
    spec.loader.exec_module(loaded)
    return loaded.render()


def generated_pages() -> dict[str, str]:
    """Page path under docs/ -> its Markdown."""
    return {
        "reference/configuration.md": _render("config_reference"),
        "reference/cli.md": _render("cli_reference"),
        "reference/grpc-api.md": _render("api_reference"),
        "changelog.md": (ROOT / "CHANGELOG.md").read_text(),
    }


def on_files(files: Files, config) -> Files:
    for path, text in generated_pages().items():
        files.append(File.generated(config, path, content=text))
    return files
