#!/usr/bin/env python3
"""Prints the test executables of one package, one per line, from the JSON messages of
`cargo test --no-run --message-format=json` on stdin (scripts/test runs the engine's again
under each forced SIMD level without building them anew).

    cargo test --workspace --no-run --message-format=json | scripts/test-executables.py quiver-engine
"""
import json
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: test-executables.py PACKAGE < cargo-messages.json", file=sys.stderr)
        return 2
    package = sys.argv[1]
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message.get("reason") != "compiler-artifact" or not message.get("executable"):
            continue
        if not message.get("profile", {}).get("test"):
            continue
        # package_id: "path+file:///…/engine#quiver-engine@0.1.0" (or "…#0.1.0" when the
        # folder's name is the package's).
        url, _, spec = message.get("package_id", "").rpartition("#")
        name = spec.split("@", 1)[0] if "@" in spec else url.rstrip("/").rsplit("/", 1)[-1]
        if name == package:
            print(message["executable"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
