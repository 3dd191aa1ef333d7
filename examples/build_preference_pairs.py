"""Build the preference pairs of the DPO example from examples/stdlib-qa (deterministic, standard library only).

Each pair asks a single-turn stdlib-qa question; the reference answer is preferred to a plausible wrong one: the
answer to another question about the same module (same house format, wrong function), or about another module when
the module has no other question. Written in OpenAI's DPO format (input / preferred_output / non_preferred_output)
to examples/stdlib-qa-pairs/train.jsonl (from stdlib-qa/train.jsonl) and test.jsonl (from stdlib-qa/test.jsonl), so the held-out
pairs ask about functions the training data never mentions.

    python examples/build_preference_pairs.py [--n-train 200] [--n-test 50] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent / "stdlib-qa"
QUALIFIED = re.compile(r"`([\w.]+)")


def single_turn(path: Path) -> list[list[dict]]:
    """The chats of a stdlib-qa file with one question and one answer (system, user, assistant)."""
    rows = [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [m for m in rows if [x["role"] for x in m] == ["system", "user", "assistant"]]


def module_of(answer: str) -> str:
    """`json.dumps(...)` -> json: the module an answer is about."""
    match = QUALIFIED.match(answer)
    return match.group(1).rsplit(".", 1)[0] if match else ""


def wrong_answer(chat: list[dict], pool: list[list[dict]], rng: random.Random) -> str:
    """Another question's answer, from the same module when there is one."""
    answer = chat[-1]["content"]
    others = [c[-1]["content"] for c in pool if c[-1]["content"] != answer]
    same_module = [a for a in others if module_of(a) == module_of(answer)]
    return rng.choice(same_module or others)


def pairs(chats: list[list[dict]], n: int, rng: random.Random) -> list[dict]:
    chosen = rng.sample(chats, min(n, len(chats)))
    return [{"input": {"messages": chat[:-1]}, "preferred_output": [chat[-1]],
             "non_preferred_output": [{"role": "assistant", "content": wrong_answer(chat, chats, rng)}]} for chat in chosen]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE.parent / "stdlib-qa-pairs")
    args = parser.parse_args()
    for split, n in (("train", args.n_train), ("test", args.n_test)):
        rows = pairs(single_turn(HERE / f"{split}.jsonl"), n, random.Random(f"{args.seed}-{split}"))
        write_jsonl(args.out / f"{split}.jsonl", rows)
        print(f"{args.out / f'{split}.jsonl'}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
