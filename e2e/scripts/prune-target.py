#!/usr/bin/env python3
"""Keeps the shared Cargo target directory from filling the disk.

Every build of a changed workspace crate under a new configuration (another
clone's path, another feature set, `cargo clippy` beside `cargo build`)
leaves its artifacts next to the older ones in `target/<profile>/deps`, and
nothing ever removes the old ones: after a few weeks of commits and CI runs
on one machine the target directory held 48 GiB, 26 of them superseded, the
disk fell under the real node's image-eviction threshold and the kubelet
deleted the imported images the cluster tests run (the node is told never
to pull them).

This script deletes, for each workspace target (its crates, test binaries
and binaries; never a dependency's), all but the KEEP most recently written
artifacts of each kind, and the incremental-compilation caches when the
disk is short of room. Cargo rebuilds a unit whose output is missing, so
the worst a deletion costs is one rebuild of one workspace crate.

    prune-target.py <repo-root> <target-dir> [--keep N] [--min-free-gib G]

It prints what it removed and how much room is left.
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys

# An artifact of a unit: [lib]<name>-<16 hex metadata>[.<ext>]
ARTIFACT = re.compile(r"^(lib)?(.+)-([0-9a-f]{16})(\..+)?$")


def workspace_target_names(repo: str) -> set[str]:
    """Names of the workspace's targets that no dependency also uses."""
    out = subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        cwd=repo,
        stderr=subprocess.DEVNULL,
    )
    meta = json.loads(out)
    members = set(meta["workspace_members"])
    ours, theirs = set(), set()
    for package in meta["packages"]:
        names = {t["name"].replace("-", "_") for t in package["targets"]}
        (ours if package["id"] in members else theirs).update(names)
    # `build_script_build` and names a dependency shares (a test called
    # `redis` beside the redis crate) are left alone: their artifacts cannot
    # be told apart by name.
    return ours - theirs - {"build_script_build"}


def free_gib(path: str) -> float:
    usage = shutil.disk_usage(path)
    return usage.free / 2**30


def prune_deps(deps: str, names: set[str], keep: int) -> tuple[int, int]:
    groups = collections.defaultdict(list)
    for entry in os.scandir(deps):
        m = ARTIFACT.match(entry.name)
        if not m or m.group(2) not in names or not entry.is_file(follow_symlinks=False):
            continue
        st = entry.stat(follow_symlinks=False)
        key = (m.group(1) or "", m.group(2), m.group(4) or "")
        groups[key].append((st.st_mtime, st.st_size, entry.path))
    files = size = 0
    for artifacts in groups.values():
        artifacts.sort(reverse=True)
        for _, bytes_, path in artifacts[keep:]:
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            files += 1
            size += bytes_
    return files, size


def tree_size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo")
    parser.add_argument("target")
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--min-free-gib", type=float, default=20.0)
    args = parser.parse_args()
    if args.keep < 1:
        parser.error("--keep must be at least 1")
    if not os.path.isdir(args.target):
        print(f"[prune] {args.target} does not exist yet; nothing to prune")
        return 0
    names = workspace_target_names(args.repo)
    before = free_gib(args.target)
    for profile in sorted(os.listdir(args.target)):
        deps = os.path.join(args.target, profile, "deps")
        if not os.path.isdir(deps):
            continue
        files, size = prune_deps(deps, names, args.keep)
        if files:
            print(f"[prune] {profile}: removed {files} superseded workspace artifacts ({size / 2**30:.1f} GiB)")
    if free_gib(args.target) < args.min_free_gib:
        for profile in sorted(os.listdir(args.target)):
            incremental = os.path.join(args.target, profile, "incremental")
            if os.path.isdir(incremental):
                size = tree_size(incremental)
                shutil.rmtree(incremental, ignore_errors=True)
                print(f"[prune] {profile}: removed the incremental caches ({size / 2**30:.1f} GiB); the disk is short of room")
    after = free_gib(args.target)
    print(f"[prune] {after:.1f} GiB free on the target directory's disk (was {before:.1f})")
    if after < args.min_free_gib:
        print(
            f"[prune] warning: under {args.min_free_gib:.0f} GiB free; the real node's kubelet evicts its "
            "imported images when its disk runs out, and the build needs room too",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
