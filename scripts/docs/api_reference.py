"""The gRPC API reference page, generated from the comments in `proto/voxline/v1/*.proto`.

protoc (grpcio-tools) parses the files and keeps their comments (`--include_source_info`),
so the page says exactly what the proto says. `python scripts/docs/api_reference.py`
prints the page.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"

# Field numbers of descriptor.proto, the steps of a SourceCodeInfo location's path.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE, FILE_SYNTAX = 4, 5, 6, 12
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE, SERVICE_METHOD = 2, 2

SCALARS = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 8: "bool",
           9: "string", 12: "bytes", 13: "uint32", 17: "sint32", 18: "sint64",
           6: "fixed64", 7: "fixed32", 15: "sfixed32", 16: "sfixed64"}


def descriptors() -> list:
    """Every proto file of the API, parsed by protoc with its comments."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    protos = sorted((PROTO_ROOT / "voxline" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.pb"
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", "--include_source_info",
                f"--descriptor_set_out={out}", *map(str, protos)]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on proto/")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return list(files.file)


def _clean(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines())


def _comments(fd) -> dict[tuple[int, ...], str]:
    notes = {}
    for loc in fd.source_code_info.location:
        text = loc.leading_comments or loc.trailing_comments
        if text.strip():
            notes[tuple(loc.path)] = text
    return notes


def _header(fd) -> list[str]:
    """The comment at the top of the file, as paragraphs."""
    for loc in fd.source_code_info.location:
        if tuple(loc.path) == (FILE_SYNTAX,):
            text = "\n\n".join([*loc.leading_detached_comments, loc.leading_comments])
            return [_clean(p) for p in re.split(r"\n\s*\n", text) if p.strip()]
    return []


def _type_name(field, package: str) -> str:
    if field.type_name:
        name = field.type_name.removeprefix(f".{package}.")
        return f"[`{name}`](#{name.lower().replace('.', '')})"
    return f"`{SCALARS.get(field.type, str(field.type))}`"


def _cell(text: str) -> str:
    return _clean(text).replace("|", "\\|")


def render() -> str:
    out = ["# gRPC API reference", "",
           "Generated from the comments in `proto/voxline/v1/` at each documentation build; "
           "the proto is the contract with gateways. For how a gateway uses it, see "
           "[gRPC (your own gateway)](../telephony/grpc.md). The Riva-compatible services on "
           "the same port use NVIDIA Riva's own protos: see "
           "[Riva-compatible API](../telephony/riva.md).", ""]
    for fd in descriptors():
        notes = _comments(fd)
        pkg = fd.package
        out += [f"File `{fd.name}`, package `{pkg}`.", ""]
        for paragraph in _header(fd):
            out += [paragraph, ""]
        for s_index, service in enumerate(fd.service):
            path = (FILE_SERVICE, s_index)
            out += [f"## Service `{pkg}.{service.name}`", "", _clean(notes.get(path, "")), "",
                    "| RPC | request | response | what it does |", "|---|---|---|---|"]
            for m_index, method in enumerate(service.method):
                req = method.input_type.removeprefix(f".{pkg}.")
                res = method.output_type.removeprefix(f".{pkg}.")
                stream_in = "stream " if method.client_streaming else ""
                stream_out = "stream " if method.server_streaming else ""
                out.append(
                    f"| `{method.name}` | {stream_in}[`{req}`](#{req.lower()}) | "
                    f"{stream_out}[`{res}`](#{res.lower()}) | "
                    f"{_cell(notes.get((*path, SERVICE_METHOD, m_index), ''))} |")
            out.append("")
        out += ["## Messages", ""]
        for index, message in enumerate(fd.message_type):
            out += _message(message, (FILE_MESSAGE, index), message.name, notes, pkg)
        out += ["## Enums", ""]
        for index, enum in enumerate(fd.enum_type):
            out += _enum(enum, (FILE_ENUM, index), enum.name, notes)
    return "\n".join(out).rstrip() + "\n"


def _message(message, path, name, notes, pkg) -> list[str]:
    out = [f"### {name}", "", _clean(notes.get(path, "")), ""]
    if message.field:
        out += ["| field | type | number | description |", "|---|---|---|---|"]
        for f_index, field in enumerate(message.field):
            kind = _type_name(field, pkg)
            if field.label == field.LABEL_REPEATED:
                entry = next((m for m in message.nested_type
                              if m.name == field.type_name.rsplit(".", 1)[-1]
                              and m.options.map_entry), None)
                if entry is not None:
                    key, value = entry.field
                    kind = f"map<{_type_name(key, pkg)}, {_type_name(value, pkg)}>"
                else:
                    kind = f"repeated {kind}"
            if field.HasField("oneof_index") and not field.proto3_optional:
                kind += f" (oneof `{message.oneof_decl[field.oneof_index].name}`)"
            out.append(f"| `{field.name}` | {kind} | {field.number} | "
                       f"{_cell(notes.get((*path, MESSAGE_FIELD, f_index), ''))} |")
        out.append("")
    for n_index, nested in enumerate(message.nested_type):
        if not nested.options.map_entry:
            out += _message(nested, (*path, MESSAGE_NESTED, n_index), f"{name}.{nested.name}",
                            notes, pkg)
    for e_index, enum in enumerate(message.enum_type):
        out += _enum(enum, (*path, MESSAGE_ENUM, e_index), f"{name}.{enum.name}", notes)
    return out


def _enum(enum, path, name, notes) -> list[str]:
    out = [f"### {name}", "", _clean(notes.get(path, "")), "",
           "| value | number | description |", "|---|---|---|"]
    for v_index, value in enumerate(enum.value):
        out.append(f"| `{value.name}` | {value.number} | "
                   f"{_cell(notes.get((*path, ENUM_VALUE, v_index), ''))} |")
    return [*out, ""]


def _elements(fd):
    """(path, name) of every service, RPC, message, field, enum and value of a file."""
    def message(m, path, name):
        yield path, name
        for i, field in enumerate(m.field):
            yield (*path, MESSAGE_FIELD, i), f"{name}.{field.name}"
        for i, nested in enumerate(m.nested_type):
            if not nested.options.map_entry:
                yield from message(nested, (*path, MESSAGE_NESTED, i), f"{name}.{nested.name}")
        for i, e in enumerate(m.enum_type):
            yield from enum(e, (*path, MESSAGE_ENUM, i), f"{name}.{e.name}")

    def enum(e, path, name):
        yield path, name
        for i, value in enumerate(e.value):
            yield (*path, ENUM_VALUE, i), f"{name}.{value.name}"

    for i, service in enumerate(fd.service):
        yield (FILE_SERVICE, i), service.name
        for j, method in enumerate(service.method):
            yield (FILE_SERVICE, i, SERVICE_METHOD, j), f"{service.name}.{method.name}"
    for i, m in enumerate(fd.message_type):
        yield from message(m, (FILE_MESSAGE, i), m.name)
    for i, e in enumerate(fd.enum_type):
        yield from enum(e, (FILE_ENUM, i), e.name)


def undocumented() -> list[str]:
    """Every service, RPC, message, field, enum and value without a comment."""
    missing = []
    for fd in descriptors():
        notes = _comments(fd)
        missing += [name for path, name in _elements(fd) if path not in notes]
    return missing


if __name__ == "__main__":
    if sys.argv[1:] == ["--undocumented"]:
        print("\n".join(undocumented()))
    else:
        sys.stdout.write(render())
