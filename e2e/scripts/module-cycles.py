#!/usr/bin/env python3
"""Fails when a module of a workspace crate imports a module that imports it back.

    module-cycles.py [repo root]

For every crate (a directory with Cargo.toml and src/), each module's code
(comments and its `#[cfg(test)] mod tests` left out) is searched for paths
into the crate (`crate::a::b`, `crate::{a, b}`, `super::x`). A reference
becomes an edge to the longest module the path names. Cycles are looked for
twice: between modules (a child naming its parent does not count, the
parent declares it), and between top-level modules (`routes::admin` counts as
`routes`). Each cycle is printed with its edges; the exit status is 1 if
there is one.

A syntactic check, not the compiler's view: a path written in a macro or
built by a `use` of a `use` is missed. It is what keeps the arrows of a
service one way (grpc/events -> store -> domain) as the code changes.
"""

import collections
import os
import re
import sys

PATH = r"[a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*"


def crates(root):
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in ("target", ".git", "node_modules")]
        if "Cargo.toml" in files and os.path.isdir(os.path.join(directory, "src")):
            yield directory


def module_name(src, path):
    parts = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return "::".join(parts)


def code_of(text):
    cut = text.find("#[cfg(test)]\nmod tests")
    if cut >= 0:
        text = text[:cut]
    return "\n".join(line for line in text.split("\n") if not line.lstrip().startswith("//"))


def modules(crate):
    src = os.path.join(crate, "src")
    found = {}
    for directory, _, files in os.walk(src):
        for name in files:
            if name.endswith(".rs"):
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8") as handle:
                    found[module_name(src, path)] = code_of(handle.read())
    return found


def references(module, code):
    own = module.split("::") if module else []
    found = set(re.findall(r"crate::(" + PATH + ")", code))
    for group in re.findall(r"crate::\{([^}]*)\}", code):
        found.update(re.findall(r"([a-z_][a-z0-9_]*)", group))
    for path in re.findall(r"super::(" + PATH + ")", code):
        found.add("::".join(own[:-1] + [path]))
    return found


def edges(mods, top_level):
    graph = collections.defaultdict(set)
    for module, code in mods.items():
        if not module:
            continue  # the crate root declares everything
        for reference in references(module, code):
            parts = reference.split("::")
            target = next(
                ("::".join(parts[:k]) for k in range(len(parts), 0, -1) if "::".join(parts[:k]) in mods),
                None,
            )
            if not target:
                continue
            if top_level:
                a, b = module.split("::")[0], target.split("::")[0]
                if a != b:
                    graph[a].add(b)
            elif target != module and not module.startswith(target + "::") and not target.startswith(module + "::"):
                graph[module].add(target)
    return graph


def cycles(graph):
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(list(graph)):
        if node not in index:
            visit(node)
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    failed = False
    checked = 0
    for crate in sorted(crates(root)):
        mods = modules(crate)
        checked += len(mods)
        for top_level in (False, True):
            graph = edges(mods, top_level)
            for component in cycles(graph):
                failed = True
                members = set(component)
                print(f"{os.path.relpath(crate, root)}: import cycle: {' <-> '.join(component)}")
                for module in component:
                    for target in sorted(graph[module] & members):
                        print(f"    {module} -> {target}")
    if failed:
        print("make the arrows run one way (grpc/events -> store -> domain); see ../shared/ARCHITECTURE.md")
        return 1
    print(f"module-cycles: no import cycle among {checked} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
