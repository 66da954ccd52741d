#!/usr/bin/env python3
"""Print the tests a JUnit XML report records as failed or in error, each with the first
lines of its message: `make molecule` ends with this list, so the last lines of a CI log
say what failed (pytest's own summary scrolls away under molecule's destroy output)."""

import sys
import xml.etree.ElementTree as ET

LINES = 6


def failures(path):
    for case in ET.parse(path).iter("testcase"):
        for outcome in ("failure", "error"):
            found = case.find(outcome)
            if found is not None:
                name = f"{case.get('classname', '')}::{case.get('name', '')}"
                text = (found.get("message") or found.text or "").strip().splitlines()
                yield outcome, name, text[:LINES]


def main(path):
    try:
        found = list(failures(path))
    except (OSError, ET.ParseError) as exc:
        print(f"no test report ({exc}): the scenario failed before or during verify")
        return
    print(f"{len(found)} test(s) failed or in error ({path}):")
    for outcome, name, text in found:
        print(f"  {outcome.upper()} {name}")
        for line in text:
            print(f"      {line[:200]}")


if __name__ == "__main__":
    main(sys.argv[1])
