"""Packs the training subset that `scripts/train-understanding` reads, from
the shared bench data (../shared/bench-data/train) and Switchyard's own
prompts (own_prompts.py). Run once when the subset changes; the result,
kinds.jsonl.gz, is committed, so a fresh clone trains without the shared data.

Only sources whose licence allows shipping a model trained on them are
packed (SOURCE.md). Rows are chosen by a hash of their ID, not at random,
so the same inputs give the same bytes.

usage: python3 data/understanding/pack.py [BENCH_DATA_TRAIN_DIR]
"""

import gzip
import hashlib
import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import own_asks  # noqa: E402
import own_kinds  # noqa: E402
import own_pairs  # noqa: E402
import own_prompts  # noqa: E402

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "..", "shared", "bench-data", "train")
tk = os.path.join(src, "task_kind")


def pick(rows, per_group, group):
    """The `per_group` rows of each group with the smallest ID hashes."""
    by = {}
    for r in rows:
        by.setdefault(group(r), []).append(r)
    out = []
    for g in sorted(by, key=str):
        rs = sorted(by[g], key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
        out.extend(rs[:per_group])
    return out


def load(name):
    with open(os.path.join(tk, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


rows = []
# Apache-2.0: real user prompts (v2.0 labelled), and templated P3 tasks.
rows += [r for r in load("arena_hard.jsonl") if r["kind"]]
rows += pick([r for r in load("p3_t0_templates.jsonl") if r["kind"]], 500, lambda r: r["kind"])
# MIT: HumanEval, MATH (with its level), BIG-Bench Hard.
rows += load("humaneval.jsonl")
rows += pick(load("hendrycks_math.jsonl"), 40, lambda r: (r["type"], r["level_int"]))
rows += pick(load("bbh.jsonl"), 40, lambda r: r["task"])
rows += own_prompts.build()
for i, (kind, prompt) in enumerate(own_kinds.build()):
    rows.append({"id": f"own_kinds/{kind}/{i}", "source": "own_kinds", "kind": kind, "prompt": prompt})
for i, (kind, prompt) in enumerate(own_asks.build()):
    rows.append({"id": f"own_asks/{kind}/{i}", "source": "own_asks", "kind": kind, "prompt": prompt})
for i, (kind, prompt, hard) in enumerate(own_pairs.build()):
    rows.append({"id": f"own_pairs/{kind}/{i}", "source": "own_pairs", "kind": kind, "prompt": prompt, "hard": hard})
# Arena-Hard-Auto v0.1 (Apache-2.0): real user prompts, kinds assigned by hand.
labels = {}
with open(os.path.join(here, "arena_v01_labels.tsv"), encoding="utf-8") as f:
    for line in f:
        if line.startswith("#") or line.startswith("id\t"):
            continue
        i, k = line.rstrip("\n").split("\t")
        if k != "x":
            labels[i] = k
for r in load("arena_hard.jsonl"):
    if r["id"] in labels:
        rows.append({"id": r["id"], "source": "arena-hard-v0.1-labelled", "kind": labels[r["id"]], "prompt": r["prompt"]})

seen = set()
out = []
for r in rows:
    norm = " ".join(r["prompt"].lower().split())
    if norm in seen:
        continue
    seen.add(norm)
    keep = {k: r[k] for k in ("id", "source", "kind", "prompt")}
    if "level_int" in r:
        keep["level"] = r["level_int"]
    if "hard" in r:
        keep["hard"] = r["hard"]
    out.append(keep)

dest = os.path.join(here, "kinds.jsonl.gz")
with open(dest, "wb") as raw:
    # mtime 0 and no file name: the same rows give the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        for r in out:
            gz.write((json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
# The difficulty score's labels. MMLU (RouteLLM's per-prompt outcomes,
# Apache-2.0; MMLU MIT): 1 where the cheap model failed and the strong one
# succeeded. MATH (MIT): levels 4-5 hard, 1-2 easy. Own pairs: as written.
diff = []
with open(os.path.join(src, "..", "replay", "mmlu.jsonl"), encoding="utf-8") as f:
    for line in f:
        r = json.loads(line)
        m = r["models"]
        strong = m["gpt-4-1106-preview"]["success"]
        weak = m["mixtral-8x7b-instruct-v0.1"]["success"]
        diff.append({"id": r["id"], "source": "mmlu", "prompt": r["prompt"], "hard": int(strong and not weak)})
for r in pick(load("hendrycks_math.jsonl"), 40, lambda r: (r["type"], r["level_int"])):
    if r.get("level_int") in (1, 2, 4, 5):
        diff.append({"id": r["id"], "source": "hendrycks_math", "prompt": r["prompt"], "hard": int(r["level_int"] >= 4)})
for r in own_prompts.build():
    if r["id"].startswith("own/pair/"):
        diff.append({"id": r["id"], "source": "own", "prompt": r["prompt"], "hard": r["hard"]})
# Own composed pairs, and copies padded with chatter to a hard request's
# length (easy stays easy, hard stays hard): length alone must not decide.
pairs = own_pairs.build()
hard_by_kind = {}
for kind, prompt, hard in pairs:
    if hard:
        hard_by_kind.setdefault(kind, []).append(prompt)
chatter = own_prompts.CHATTER
for i, (kind, prompt, hard) in enumerate(pairs):
    diff.append({"id": f"own_pairs/{i}", "source": "own_pairs", "prompt": prompt, "hard": hard})
    target = len(hard_by_kind[kind][i % len(hard_by_kind[kind])]) if not hard else len(prompt) + 80
    pad, k = [], i
    while len(" ".join(pad)) + len(prompt) < target:
        pad.append(chatter[k % len(chatter)])
        k += 3
    half = len(pad) // 2
    text = " ".join(pad[:half] + [prompt] + pad[half:])
    diff.append({"id": f"own_pairs/{i}/padded", "source": "own_pairs", "prompt": text, "hard": hard})

# No 8-word run of the development sets (the pairs, the open questions and
# the word problems) may appear in training.
def runs(text, n=8):
    w = "".join(c.lower() if c.isalnum() else " " for c in text).split()
    return {" ".join(w[j:j + n]) for j in range(len(w) - n + 1)}
dev = set()
with open(os.path.join(here, "dev_pairs.jsonl"), encoding="utf-8") as f:
    for line in f:
        d = json.loads(line)
        dev |= runs(d["easy"]) | runs(d["hard"])
for name in ("dev_open.jsonl", "dev_word_problems.jsonl"):
    with open(os.path.join(here, name), encoding="utf-8") as f:
        for line in f:
            dev |= runs(json.loads(line)["prompt"])
for r in diff + rows:
    shared = runs(r["prompt"]) & dev
    if shared:
        sys.exit(f"{r['id']} shares a run with a development set: {sorted(shared)[0]!r}")

ddest = os.path.join(here, "difficulty.jsonl.gz")
with open(ddest, "wb") as raw:
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        for r in diff:
            gz.write((json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
print(f"{ddest}: {len(diff)} rows, {sum(r['hard'] for r in diff)} hard")

counts = {}
for r in out:
    counts[(r["source"], r["kind"])] = counts.get((r["source"], r["kind"]), 0) + 1
print(f"{dest}: {len(out)} rows")
for k in sorted(counts):
    print(f"  {k[0]:<24} {k[1]:<15} {counts[k]}")
