#!/usr/bin/env python3
"""Fails when a module of the library imports from a stage above its own, or when two modules
import each other. Run by scripts/test.sh; `python3 scripts/check-layers.py` from anywhere.

The stages are the top-level modules of src/, lowest first (a module may use its own stage and
those below):
  names     every name
  parse     annotations, provider (headers, body, reset durations), stream (SSE)
  record    CallRecord and errors, pricing, limits, xproxy (Pay-i's outcome)
  sinks     span, metrics, Prometheus, OTLP export
  pipeline  prepare, admit, send, observe, finish
  doors     client, openai_layer, middleware, observe (what the last two share)

A module is one file (`src/record/limits.rs` is `record::limits`, `src/record/mod.rs` is
`record`). `src/lib.rs` only re-exports and is not checked.
"""
import pathlib
import re
import sys

STAGES = ["names", "parse", "record", "sinks", "pipeline", "doors"]
STAGE_OF = {name: i for i, name in enumerate(STAGES)}
USE = re.compile(r"\bcrate::([a-z_]+(?:::[a-z_]+)*)")


def module_of(path, src):
    """`record::limits` for src/record/limits.rs, `record` for src/record/mod.rs."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return "::".join(parts)


def code_lines(text):
    """Lines of code before the unit tests, comments left out."""
    for line in text.splitlines():
        if line.strip() == "#[cfg(test)]":
            return
        if not line.lstrip().startswith("//"):
            yield line


def used_module(path, modules):
    """The longest module that `crate::path` names (`record::limits::LimitState` is `record::limits`)."""
    parts = path.split("::")
    for n in range(len(parts), 0, -1):
        candidate = "::".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def main():
    src = pathlib.Path(__file__).resolve().parent.parent / "src"
    files = {module_of(p, src): p for p in sorted(src.rglob("*.rs")) if p.name != "lib.rs"}
    imports = {}
    problems = []
    for module, path in files.items():
        stage = module.split("::")[0]
        if stage not in STAGE_OF:
            problems.append(f"{path.relative_to(src.parent)}: {stage!r} is not a stage in scripts/check-layers.py")
            continue
        for line in code_lines(path.read_text()):
            for used_path in USE.findall(line):
                used = used_module(used_path, files)
                if used is None or used == module:
                    continue
                imports.setdefault(module, set()).add(used)
                used_stage = used.split("::")[0]
                if STAGE_OF[used_stage] > STAGE_OF[stage]:
                    problems.append(
                        f"{path.relative_to(src.parent)}: {module} ({stage}) uses {used} "
                        f"({used_stage}), a stage above it: {line.strip()}"
                    )
    for a, uses in imports.items():
        for b in uses:
            if a < b and a in imports.get(b, set()):
                problems.append(f"{a} and {b} import each other")
    if problems:
        print("check-layers: FAILED", *problems, sep="\n  ")
        sys.exit(1)
    edges = sum(len(v) for v in imports.values())
    print(
        f"check-layers: ok ({len(files)} modules in {len(STAGES)} stages, {edges} imports, "
        "each to its own stage or below, no two importing each other)"
    )


if __name__ == "__main__":
    main()
