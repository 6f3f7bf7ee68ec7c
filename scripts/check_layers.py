#!/usr/bin/env python3
"""Check that every include under include/adabldm points down the layers (docs/architecture.md, "Layers").

Reads every `#include "adabldm/..."` and `#include <adabldm/...>` in include/adabldm/**, maps the including file and
the included file to their folders (core, ops, io, text, nn, autograd, models, sampling, defect, eval; files directly in
include/adabldm are the umbrella headers and may include anything, and no folder may include them) and fails,
naming the file, the line and the include, when a folder includes one that is not below it. Includes inside one
folder are always allowed. Then checks that the folder graph has no cycle (which the layer table already
guarantees; the second check keeps the table honest if someone edits it).

Usage: scripts/check_layers.py [REPO_ROOT]     exit status 0 when clean, 1 when an include runs up the order.
"""
import os
import re
import sys

# The layers, bottom first: a folder may include its own folder and the folders of the rows below it, never one
# of its own row or above. This is the order of docs/architecture.md ("Layers"); keep the two in step.
LAYERS = [
    ["core"],
    ["ops", "io", "text"],
    ["nn"],
    ["autograd"],
    ["models"],
    ["sampling"],
    ["defect"],
    ["eval"],
]
ORDER = [f for row in LAYERS for f in row]
ALLOWED = {f: {g for lower in LAYERS[:i] for g in lower} for i, row in enumerate(LAYERS) for f in row}
UMBRELLA = "(umbrella)"  # adabldm.hpp, cuda.cuh, version.hpp: they gather the layers for users

INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](adabldm/[^">]+)[">]')


def folder_of(rel):
    """'core/cuda/tensor.cuh' -> 'core'; 'adabldm.hpp' -> UMBRELLA."""
    parts = rel.split("/")
    return parts[0] if len(parts) > 1 else UMBRELLA


def strongly_connected(graph):
    """The folder sets that reach each other (Tarjan), only those with more than one folder."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(n):
        index[n] = low[n] = len(index)
        stack.append(n)
        on.add(n)
        for m in sorted(graph.get(n, ())):
            if m not in index:
                visit(m)
                low[n] = min(low[n], low[m])
            elif m in on:
                low[n] = min(low[n], index[m])
        if low[n] == index[n]:
            comp = []
            while True:
                m = stack.pop()
                on.discard(m)
                comp.append(m)
                if m == n:
                    break
            if len(comp) > 1:
                out.append(sorted(comp, key=lambda f: ORDER.index(f) if f in ORDER else 99))
        return None

    for n in sorted(graph):
        if n not in index:
            visit(n)
    return out


def find_cycle(graph):
    """Returns one cycle of the folder graph as a list of folders, or None."""
    state = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    base = os.path.join(root, "include", "adabldm")
    if not os.path.isdir(base):
        print(f"check_layers: no include/adabldm under {root}", file=sys.stderr)
        return 2
    errors = []
    graph = {}
    files = 0
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base).replace(os.sep, "/")
            src = folder_of(rel)
            if src != UMBRELLA and src not in ALLOWED:
                errors.append(f"include/adabldm/{rel}: folder '{src}' is not in the layer table "
                              f"(add it to scripts/check_layers.py and docs/architecture.md)")
                continue
            files += 1
            with open(path, encoding="utf-8", errors="replace") as f:
                for lineno, line in enumerate(f, 1):
                    m = INCLUDE.match(line)
                    if not m:
                        continue
                    target = m.group(1)[len("adabldm/"):]
                    dst = folder_of(target)
                    if dst == src or src == UMBRELLA:
                        continue
                    if src != UMBRELLA:
                        graph.setdefault(src, set()).add(dst)
                    if dst == UMBRELLA:
                        errors.append(f"include/adabldm/{rel}:{lineno}: includes the umbrella header "
                                      f"'adabldm/{target}' ({src} may include only {describe(src)})")
                    elif dst not in ALLOWED.get(src, set()):
                        errors.append(f"include/adabldm/{rel}:{lineno}: '{src}' includes 'adabldm/{target}' "
                                      f"from '{dst}', which is not below it ({src} may include only "
                                      f"{describe(src)})")
    cycle = find_cycle(graph)
    if cycle:
        errors.append("folder include graph has a cycle: " + " -> ".join(cycle))
        for comp in strongly_connected(graph):
            errors.append(f"{len(comp)} folders reach each other through includes: {', '.join(comp)}")
    if errors:
        for e in errors:
            print(e)
        print(f"check_layers: {len(errors)} problem(s) in {files} headers; the layer order is in "
              f"docs/architecture.md")
        return 1
    print(f"check_layers: {files} headers, every include points down the layers; folder graph:")
    for src in ORDER:
        print(f"  {src} -> {', '.join(sorted(graph.get(src, ()), key=ORDER.index)) or '(nothing)'}")
    return 0


def describe(folder):
    allowed = ALLOWED.get(folder, set())
    return ", ".join(sorted(allowed, key=ORDER.index)) if allowed else "itself"


if __name__ == "__main__":
    sys.exit(main())
