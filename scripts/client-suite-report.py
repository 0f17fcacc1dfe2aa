"""Reads the junit report of a Qdrant client's own test suite run against Quiver
(scripts/langchain-qdrant-suite, scripts/qdrant-client-suite) and says what failed and why.

Every failure is put under the refusal Quiver's Qdrant API answered it with (the exception a
test ended with: an `UnexpectedResponse` whose body says `"error": "… is not supported …"`),
or under "other". With `--check`, the exit status is 1 when a failure is not one of the
features Quiver refuses on purpose today (`EXPECTED`: none since named and sparse vectors and
hybrid queries came, issue #33) — a test of what Quiver supports that fails is a regression —
or when fewer than `--min-passed N` tests passed (a suite that did not reach the server passes
nothing).

    python3 scripts/client-suite-report.py REPORT.xml [--check] [--min-passed N] [--title T]
"""

import collections
import re
import sys
import xml.etree.ElementTree as ET

# Refusals that are features still to build (docs/QDRANT.md lists them): none the suite reaches.
EXPECTED: tuple[str, ...] = ()


def reason(failure: ET.Element) -> str:
    """The refusal in the exception the test ended with (not in its log), else "other: …"."""
    message = failure.get("message") or ""
    m = re.search(r'"error":"([^"]*?) is not supported', message.replace('\\"', '"'))
    if message.startswith("qdrant_client.") and m:
        return m.group(1)
    # gRPC: UNIMPLEMENTED with the same words in its details.
    m = re.search(r'details = "([^"]*?) is not supported by Quiver', message)
    if m:
        return m.group(1)
    return "other: " + message.split("\n")[0][:160]


def main() -> int:
    argv = sys.argv[1:]
    check = "--check" in argv
    min_passed = 1
    title = "langchain-qdrant"
    if "--title" in argv:
        i = argv.index("--title")
        title = argv[i + 1]
        del argv[i : i + 2]
    if "--min-passed" in argv:
        i = argv.index("--min-passed")
        min_passed = int(argv[i + 1])
        del argv[i : i + 2]
    args = [a for a in argv if not a.startswith("--")]
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
    print(f"{title} against Quiver: {passed} of {len(cases)} passed")
    for r, n in reasons.most_common():
        print(f"  {n:4d} refused: {r}")
    if unexpected:
        print(f"{len(unexpected)} failures outside the features still to build:")
        for u in unexpected[:40]:
            print("  " + u)
    if passed < min_passed:
        print(f"only {passed} passed, fewer than {min_passed}: did the suite reach the server?")
    return 1 if check and (unexpected or passed < min_passed) else 0


if __name__ == "__main__":
    sys.exit(main())
