"""Prints the first fenced code block under a README heading as a bash script, so that CI runs those
lines verbatim:  python3 .ci/readme_block.py README.md "Quickstart" > quickstart.sh
Each line is followed by a check of its status: `bash -e` would let a failure inside `a && b` pass.
Fails (exit 1) when the heading has no code block before the next heading, so that a renamed or
emptied section cannot go untested."""
import re
import sys


def block(text: str, heading: str) -> str:
    inside, fence, lines = False, False, []
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if fence and inside:
                return "".join(lines)
            fence = not fence
        elif fence:
            lines += [line] if inside else []
        elif re.match(r"#+ ", line):  # a heading (outside a fence: a shell comment there is no heading)
            inside = re.match(rf"#+ {re.escape(heading)}\b", line) is not None
    raise SystemExit(f"{heading!r}: no such heading with a fenced code block in the README")


def checked(lines: str) -> str:
    """The lines as a script that stops at the first one that fails, naming it."""
    out = ["set -o pipefail"]
    for line in lines.splitlines():
        if line.rstrip().endswith("\\"):
            raise SystemExit(f"a continued line cannot be checked line by line: {line}")
        if line.strip() and not line.lstrip().startswith("#"):
            quoted = line.replace("'", "'\\''")
            out += [f"echo '+ {quoted}'", line,
                    f"rc=$?; if [ $rc -ne 0 ]; then echo 'README line failed (exit '$rc'): {quoted}'; exit $rc; fi"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    path, heading = sys.argv[1:3]
    with open(path) as f:
        print(checked(block(f.read(), heading)), end="")
