"""The documentation checked like code: every setting has a description and the generated
configuration reference names every key; the gRPC reference covers every part of the proto;
the commands the quick start and the getting-started page show are ones the CLI accepts
(and the check refuses one it does not), and every benchmark page gives the command and
the date of its figures. `scripts/test.sh` also builds the site with `mkdocs build
--strict`, which fails on a broken link, a missing page or a bad anchor."""

from __future__ import annotations

import importlib.util
import re
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from voxline.config import PROJECT_ROOT, Settings

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """A module of scripts/docs/, loaded by path (scripts/ is not a package)."""
    path = ROOT / "scripts" / "docs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _models_inside(annotation: Any) -> bool:
    return any(_is_model(a) or _models_inside(a) for a in typing.get_args(annotation))


def _walk(model: type[BaseModel], prefix: str = ""
          ) -> Iterator[tuple[str, FieldInfo, type[BaseModel] | None]]:
    """(dotted key, field, its section's model or None) of every field, recursively; the
    entries of a list of models are keyed `list[].field`."""
    for name, field in model.model_fields.items():
        key, ann = f"{prefix}{name}", field.annotation
        if _is_model(ann):
            yield key, field, ann
            yield from _walk(ann, f"{key}.")
            continue
        yield key, field, None
        if typing.get_origin(ann) is list and _is_model(typing.get_args(ann)[0]):
            yield from _walk(typing.get_args(ann)[0], f"{key}[].")
        else:
            assert not _models_inside(ann), (
                f"{key}: a model inside {ann} is neither a section nor a list of entries, "
                "which scripts/docs/config_reference.py does not document")


def test_every_setting_is_described_and_in_the_configuration_reference() -> None:
    missing = [key for key, field, _ in _walk(Settings)
               if not (field.description or "").strip()]
    assert not missing, f"fields without description=: {missing}"
    undocumented = sorted({m.__name__ for _, _, m in _walk(Settings)
                           if m is not None and not (m.__dict__.get("__doc__") or "").strip()})
    assert not undocumented, f"sections without a docstring: {undocumented}"
    page = _script("config_reference").render()
    assert page.startswith("# Configuration reference\n")
    for key, _, section in _walk(Settings):
        if section is not None:  # a section is a heading, its fields are table rows
            assert f"# {key}\n" in page, f"no heading for section {key}"
        else:
            assert f"| `{key}` |" in page, f"no row for {key}"
    for needle in ("turn.end_of_turn_silence_ms", "telephony.sip.rtp_port_min",
                   "auth.tenants[].api_key_env", "telephony.sip.accounts[].password_file"):
        assert f"`{needle}`" in page
    # Defaults under the checkout or the home directory are written machine-independently.
    assert "`<checkout>/models`" in page
    assert "`~/.local/share/voxline/calls.db`" in page
    for root in (PROJECT_ROOT, Path.home()):
        if len(root.parts) > 1:
            assert f"{root}/" not in page


def test_documented_commands_are_accepted_and_a_wrong_one_is_refused(tmp_path):
    check = _script("check_commands")
    assert check.check(check.PAGES) == []
    page = tmp_path / "page.md"
    page.write_text("# Try\n\n```bash\n"
                    ".venv/bin/voxline serve --metrics-port 9464\n"
                    ".venv/bin/voxline serve --no-such-flag\n"
                    ".venv/bin/voxline call --rate 11025 jfk.flac\n"
                    "scripts/no_such_script.sh\n"
                    "curl http://127.0.0.1:9464/metrics\n"
                    "```\n")
    problems = check.check([str(page)])
    assert len(problems) == 4, problems
    assert "--no-such-flag" in problems[0] and "11025" in problems[1]
    assert "no such script" in problems[2] and "'curl'" in problems[3]


def test_every_part_of_the_grpc_api_is_in_its_reference():
    api = _script("api_reference")
    assert api.undocumented() == [], "give these a comment in proto/voxline/v1/"
    page = api.render()
    for fd in api.descriptors():
        for message in fd.message_type:
            assert f"### {message.name}\n" in page
            for field in message.field:
                assert f"| `{field.name}` |" in page
        for service in fd.service:
            for method in service.method:
                assert f"| `{method.name}` |" in page


def test_every_benchmark_page_gives_its_command_and_date():
    pages = sorted((ROOT / "docs/benchmarks").glob("*.md"))
    assert len(pages) > 10
    for page in pages:
        text = page.read_text()
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{page.name}: no date"
        assert re.search(r"```bash\n[^`]*(scripts/\S+\.py|voxline bench)", text), (
            f"{page.name}: no command")
