"""Run the bad-input corpus through the CLI and write how every input ended (issue 9, item 2).

Each input of ``tests/badinput/manifest.yaml`` goes through ``rewardmix.cli.main`` exactly as in
``tests/badinput/test_corpus.py`` (same runner): a malformed input must end with a non-zero exit and one
``rewardmix: error:`` line naming file, line and field, or with exit 0 and a counted, logged skip; never a
traceback, never a row lost. The table lists the file, what is wrong with it, and how it ended; the last column
says whether that matched the manifest.

Usage (from the repository root):

    .venv/bin/python bench/bad_input_report.py                 # writes bench/results/bad_input.md
    .venv/bin/python bench/bad_input_report.py --out /tmp/x.md

Exit status 1 when an input did not end as the manifest says.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import benchlib
import torch

sys.path.insert(0, str(benchlib.REPO))  # the runner lives with the tests: one definition of "as expected"

from tests.badinput import runner  # noqa: E402

log = logging.getLogger("bench")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=benchlib.RESULTS / "bad_input.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = benchlib.machine_info(threads=1)

    cases = runner.load_manifest()
    rows, failures = [], []
    environment, root = runner.new_environment()
    try:
        with environment:
            for case in cases:
                outcome = runner.run_case(case, environment)
                problems = runner.check_case(case, outcome)
                if problems:
                    failures.append((case.file, problems))
                rows.append((case, outcome, problems))
                print(f"{'ok  ' if not problems else 'FAIL'} {case.file}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    benchlib.finish_machine_info(info)

    endings = Counter(case.expect for case, _, _ in rows)
    tracebacks = sum(o.raised is not None or runner.TRACEBACK in o.stderr + o.log for _, o, _ in rows)
    lines = [
        "# Bad-input corpus: how every malformed input ends",
        "",
        "Command: `.venv/bin/python bench/bad_input_report.py` (inputs and expectations: `tests/badinput/`,",
        "checked by `tests/badinput/test_corpus.py`). Each input ran through `rewardmix.cli.main`; paths below are",
        "shortened to the file name.",
        "",
        *benchlib.machine_lines(info),
        "",
        f"**{len(rows)} inputs: {endings['error']} end in an error (non-zero exit, message naming file, line and "
        f"field), {endings['skip']} in a counted skip (exit 0, skipped rows counted in the read report or stats "
        f"and logged by line). Tracebacks: {tracebacks}. "
        f"Not as expected: {len(failures)}.**",
        "",
        "| # | input | stage | what is wrong | how it ended | as expected |",
        "|---|---|---|---|---|---|",
    ]
    for i, (case, outcome, problems) in enumerate(rows, start=1):
        ended = _short_paths(runner.describe(case, outcome)).replace("|", "\\|")
        verdict = "yes" if not problems else "NO: " + "; ".join(problems).replace("|", "\\|")
        lines.append(f"| {i} | `{case.file}` | {case.command[0]} | {case.what} | {ended} | {verdict} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(rows)} inputs, {len(failures)} not as expected", file=sys.stderr)
    return 1 if failures else 0


def _short_paths(text: str) -> str:
    """Drop the machine-specific folders in front of file names (``/tmp/x/y/f.jsonl:3`` -> ``f.jsonl:3``)."""
    return re.sub(r"(?:/[^/\s:'\"`]+)+/", "", text)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
