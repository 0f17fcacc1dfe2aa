"""Reads the junit report of scripts/langchain-qdrant-suite and says what failed and why.

Every failure is put under the refusal Quiver's Qdrant API answered it with (the
`"error": "… is not supported …"` text in the failure), or under "other". With `--check`, the
exit status is 1 when a failure is not one of the features Quiver refuses on purpose today
(`EXPECTED`: named vectors, sparse vectors; issue #33 builds them): a test of what Quiver
supports that fails is a regression.

    python3 scripts/langchain-qdrant-report.py target/langchain-qdrant/report.xml [--check]
"""

import collections
import re
import sys
import xml.etree.ElementTree as ET

# Refusals that are features still to build (docs/QDRANT.md lists them).
EXPECTED = ("named vectors", "sparse vectors")


def reason(failure: ET.Element) -> str:
    text = (failure.text or "").replace('\\"', '"')
    m = re.search(r'"error":"([^"]*?) is not supported', text)
    if m:
        return m.group(1)
    return "other: " + (failure.get("message") or "").split("\n")[0][:160]


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    check = "--check" in sys.argv[1:]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    cases = list(ET.parse(args[0]).iter("testcase"))
    reasons = collections.Counter()
    unexpected = []
    passed = 0
    for tc in cases:
        f = tc.find("failure")
        if f is None:
            f = tc.find("error")
        if f is None:
            passed += tc.find("skipped") is None
            continue
        r = reason(f)
        reasons[r] += 1
        if not any(e in r for e in EXPECTED):
            unexpected.append(f"{tc.get('classname')}::{tc.get('name')}: {r}")
    print(f"langchain-qdrant against Quiver: {passed} of {len(cases)} passed")
    for r, n in reasons.most_common():
        print(f"  {n:4d} refused: {r}")
    if unexpected:
        print(f"{len(unexpected)} failures outside the features still to build:")
        for u in unexpected[:40]:
            print("  " + u)
    return 1 if check and unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
