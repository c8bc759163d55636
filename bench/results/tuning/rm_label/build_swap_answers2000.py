"""The training pairs of minilm_swap_answers2000 (docs/tuning.md, section 8), as they were built.

Teacher pairs + one label-swap pair per teacher pair + answer-only pairs for 2,000 ``rest`` sentences (after a
seeded shuffle). Run from the repository root after the repro profile's split and rationales steps and
``rewardmix pairs ... output_dir=runs/tuning/pairs_teacher`` (see docs/tuning.md, "Reproduce").
"""

import json
import os
import random

rng = random.Random(0)
with open("runs/tuning/pairs_teacher/train.jsonl") as f:
    teacher = [json.loads(line) for line in f]


def swap(answer: str, wrong: str) -> str:
    head = answer.rsplit("The answer is:", 1)[0]
    return head + "The answer is: " + wrong


out = []
for p in teacher:
    out.append(p)
    wrong = p["rejected"].rsplit("The answer is:", 1)[1].strip()
    q = dict(p)
    q["rejected"] = swap(p["chosen"], wrong)
    q["meta"] = {**p.get("meta", {}), "augment": "label_swap"}
    out.append(q)
with open("runs/repro/split/rest.jsonl") as f:
    rest = [json.loads(line) for line in f]
rng.shuffle(rest)
for r in rest[:2000]:
    wrong = "negative" if r["label"] == "positive" else "positive"
    out.append(
        {"prompt": r["question"], "chosen": "The answer is: " + r["label"], "rejected": "The answer is: " + wrong,
         "kind": "label_sensitive", "task": "mr", "meta": {"augment": "answer_only", "id": r["id"]}}
    )  # fmt: skip
rng.shuffle(out)
os.makedirs("runs/tuning/pairs_swap_answers2000", exist_ok=True)
with open("runs/tuning/pairs_swap_answers2000/train.jsonl", "w") as f:
    for p in out:
        f.write(json.dumps(p) + "\n")
print(len(out), "pairs")
