#!/usr/bin/env python3
"""Prints test executables, one per line, from the JSON messages of
`cargo test --no-run --message-format=json` on stdin: every one of a package, or the one of
an integration test target. scripts/test runs them again (the engine's under each forced SIMD
level, the CUDA compile test with NVRTC's environment) without building them anew: a
`cargo test -p PACKAGE` or `--test NAME` can resolve dependencies apart from the first
stage's build and rebuild tens of crates.

    cargo test --workspace --no-run --message-format=json | scripts/test-executables.py quiver-engine
    cargo test --workspace --no-run --message-format=json | scripts/test-executables.py --test compile
"""
import json
import sys


def package_name(message: dict) -> str:
    # package_id: "path+file:///…/engine#quiver-engine@0.1.0", or "…/engine#0.1.0" when the
    # folder's name is the package's.
    url, _, spec = message.get("package_id", "").rpartition("#")
    return spec.split("@", 1)[0] if "@" in spec else url.rstrip("/").rsplit("/", 1)[-1]


def main() -> int:
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--test":
        wanted = lambda m: m["target"]["name"] == args[1] and "test" in m["target"]["kind"]
    elif len(args) == 1 and not args[0].startswith("-"):
        wanted = lambda m: package_name(m) == args[0]
    else:
        print(__doc__, file=sys.stderr)
        return 2
    found = 0
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message.get("reason") != "compiler-artifact" or not message.get("executable"):
            continue
        if not message.get("profile", {}).get("test") or not wanted(message):
            continue
        print(message["executable"])
        found += 1
    if found == 0:
        print(f"no test executable matches {' '.join(args)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
