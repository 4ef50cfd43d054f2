#!/usr/bin/env python3
"""Fails when a module of the library imports from a layer above its own, or when two modules
import each other. Run by scripts/test.sh; `python3 scripts/check-layers.py` from anywhere.

The layers, lowest first (a module may use its own layer and those below):
  names     semconv: every name
  parse     annotations, provider (headers, body, reset durations), stream (SSE)
  record    record (CallRecord, errors), pricing, limits, xproxy (Pay-i's outcome)
  sinks     telemetry (span, metrics, Prometheus, OTLP)
  pipeline  meter (prepare, admit, send, observe, finish)
  doors     client, openai_layer
"""
import pathlib
import re
import sys

LAYERS = [
    ["semconv"],
    ["annotations", "provider", "stream"],
    ["record", "pricing", "limits", "xproxy"],
    ["telemetry"],
    ["meter"],
    ["client", "openai_layer"],
]
LAYER_OF = {m: i for i, layer in enumerate(LAYERS) for m in layer}
NAMES = ["names", "parse", "record", "sinks", "pipeline", "doors"]
USE = re.compile(r"\bcrate::([a-z_]+)")


def module_of(path, src):
    rel = path.relative_to(src)
    return rel.parts[0].removesuffix(".rs")


def code_lines(text):
    """Lines of code before the unit tests, comments left out."""
    for line in text.splitlines():
        if line.strip() == "#[cfg(test)]":
            return
        if not line.lstrip().startswith("//"):
            yield line


def main():
    src = pathlib.Path(__file__).resolve().parent.parent / "src"
    imports = {}
    problems = []
    for path in sorted(src.rglob("*.rs")):
        module = module_of(path, src)
        if module == "lib":
            continue  # the root re-exports everything
        if module not in LAYER_OF:
            problems.append(f"{path.relative_to(src.parent)}: module {module!r} has no layer in scripts/check-layers.py")
            continue
        for line in code_lines(path.read_text()):
            for used in USE.findall(line):
                if used == module or used not in LAYER_OF:
                    continue
                imports.setdefault(module, set()).add(used)
                if LAYER_OF[used] > LAYER_OF[module]:
                    problems.append(
                        f"{path.relative_to(src.parent)}: {module} ({NAMES[LAYER_OF[module]]}) uses {used} "
                        f"({NAMES[LAYER_OF[used]]}), a layer above it: {line.strip()}"
                    )
    for a, uses in imports.items():
        for b in uses:
            if a < b and a in imports.get(b, set()):
                problems.append(f"{a} and {b} import each other")
    if problems:
        print("check-layers: FAILED", *problems, sep="\n  ")
        sys.exit(1)
    edges = sum(len(v) for v in imports.values())
    print(f"check-layers: ok ({len(imports)} modules, {edges} imports, each to its own layer or below, no two importing each other)")


if __name__ == "__main__":
    main()
