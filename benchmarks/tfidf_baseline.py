"""The classical baseline for one-word classification tasks: TF-IDF + logistic regression (scikit-learn).

Reads chat-format JSONL (the last user message is the input, the last assistant message the label),
fits on --train, picks C on --validation, refits on train and reports held-out accuracy on --test,
scored as `tunewright eval`'s accuracy (normalized exact match). Seconds on a CPU.

  python benchmarks/tfidf_baseline.py --train examples/stdlib-modules/train.jsonl \
      --validation examples/stdlib-modules/validation.jsonl --test examples/stdlib-modules/test.jsonl
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, make_pipeline

C_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


def read_examples(path: str) -> tuple[list[str], list[str]]:
    """(input text, label) per row: the last user turn and the last assistant turn."""
    texts, labels = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        texts.append([m["content"] for m in messages if m["role"] == "user"][-1])
        labels.append([m["content"] for m in messages if m["role"] == "assistant"][-1].strip().lower())
    return texts, labels


def classifier(c: float, features: str = "words+chars"):
    """Word 1-2 grams (the textbook baseline), plus character 2-5 grams by default (stronger on short texts)."""
    parts = [("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1))]
    if features == "words+chars":
        parts.append(("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)))
    return make_pipeline(FeatureUnion(parts), LogisticRegression(C=c, max_iter=2000))


def accuracy(model, texts: list[str], labels: list[str]) -> float:
    return sum(p == y for p, y in zip(model.predict(texts), labels)) / len(labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True)
    p.add_argument("--validation", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--features", choices=("words", "words+chars"), default="words+chars")
    p.add_argument("--refit-on-validation", action="store_true",
                   help="fit the final model on train + validation with the C validation chose (as a refit LoRA run sees both)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    start = time.perf_counter()
    train, val, test = read_examples(args.train), read_examples(args.validation), read_examples(args.test)
    val_acc = {c: accuracy(classifier(c, args.features).fit(*train), *val) for c in C_GRID}
    best_c = max(C_GRID, key=lambda c: (val_acc[c], -c))
    final = [a + b for a, b in zip(train, val)] if args.refit_on_validation else train
    model = classifier(best_c, args.features).fit(*final)
    result = {"model": f"tfidf({args.features})+logreg", "fit_on": "train+validation" if args.refit_on_validation else "train",
              "C": best_c, "validation_accuracy": round(val_acc[best_c], 4),
              "test_accuracy": round(accuracy(model, *test), 4), "n_test": len(test[1]),
              "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
