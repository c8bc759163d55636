"""Kill-and-resume trials: SIGKILL real ``rewardmix`` CLI runs at random points, rerun, compare (issue 9, item 1).

A thin entry point to ``tests/reliability/harness.py`` (read its docstring for what is killed where and what is
compared). Each stage (sft, reward-model, ppo on the tiny Llama; rationales against a local fake
OpenAI-compatible server) gets one uninterrupted reference run and chains of 3 kills + a final rerun; the results
go to ``bench/results/kill_resume.json`` (every trial) and ``bench/results/kill_resume.md`` (the table).

Usage (from the repository root; CPU only, a few minutes on 2 cores):

    .venv/bin/python bench/kill_resume.py                 # 24 trials, 6 per stage
    .venv/bin/python bench/kill_resume.py --trials 8 --stages sft ppo --keep

The exit status is 1 when any trial found a problem (a weight or metric that differs, a duplicated or missing
row, a half-written checkpoint, an undetected corruption, a teacher call paid twice beyond those in flight).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.reliability.harness and tests.fake_llm live in the repository

from tests.reliability.harness import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(prog="python bench/kill_resume.py"))
