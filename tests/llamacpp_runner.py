"""Run a GGUF file in real llama.cpp (llama-cpp-python) and report what it did, as JSON.

Run by `.venv-llama/bin/python` as a subprocess of the tests (the main environment does not get
llama-cpp-python): a JSON request on stdin, a JSON answer on stdout. Only the standard library and
`llama_cpp` are imported here.

Request:  {"gguf": path, "n_ctx": 512,
           "tokenize": [text, ...],                      # tokenized as HF `tokenizer(text)` does
           "greedy": [{"ids": [...], "n": 8}, ...],       # argmax continuation of token ids
           "chat": {"messages": [...], "max_tokens": 24, "force_end_after": null | k}}
Answer:   {"tokens": [[...]], "tokens_plain": [[...]], "greedy": [[...]], "margins": [[...]], "first_logits": [[...]],
           "chat": {"text", "finish_reason", "completion_tokens", "prompt_ids", "generated_ids", "forced_steps"},
           "eos_id", "eot_id", "eog": {token id: bool}}
"""
from __future__ import annotations

import json
import sys

import numpy as np


def load(path: str, n_ctx: int):
    """The model, with weights in plain CPU buffers (as `llama-cli --no-repack`).

    llama.cpp's extra CPU weight buffers (AMX / repacked) segfault on this AMX CPU for quantized weights once a
    batch has 2+ tokens (llama.cpp#20824): llama.cpp's own q8_0 of the same f16 file and the upstream SmolLM2
    Q4_1 crash alike, so it is no fault of the file. llama-cpp-python has no argument for it: patch the defaults.
    """
    import llama_cpp.llama as llama_module
    from llama_cpp import Llama

    defaults = llama_module.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = without_extra_buffers
    try:
        # logits_all is not needed: greedy reads the last position's logits straight from the context
        return Llama(model_path=path, n_ctx=n_ctx, n_threads=1, n_batch=n_ctx, seed=0, verbose=False)
    finally:
        llama_module.llama_cpp.llama_model_default_params = defaults


def tokenize(llm, texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Each text as HF `tokenizer(text)` (BOS/EOS as the vocab asks) and `add_special_tokens=False` do.

    `special=True` parses special-token text (`<|im_end|>`) as the token, as HF tokenizers do.
    """
    with_specials = [llm.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in texts]
    plain = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
    return with_specials, plain


def last_logits(llm) -> np.ndarray:
    """The logits after the last evaluated token (llama-cpp-python keeps `scores` only with logits_all)."""
    import llama_cpp

    row = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(row, shape=(llm.n_vocab(),)).astype(np.float64)


def greedy(llm, ids: list[int], n: int) -> tuple[list[int], list[float], list[float]]:
    """n argmax tokens after `ids`, straight from the logits (no sampler), each step's top-1 minus top-2 gap,
    and the first step's logits."""
    llm.reset()
    llm.eval(ids)
    out, margins, first = [], [], None
    for _ in range(n):
        logits = last_logits(llm)
        first = logits.tolist() if first is None else first
        top2 = np.argsort(logits)[-2:]
        out.append(int(top2[1]))
        margins.append(float(logits[top2[1]] - logits[top2[0]]))
        llm.eval([out[-1]])
    return out, margins, first


def chat(llm, messages: list[dict], max_tokens: int, force_end_after: int | None, end_id: int) -> dict:
    """create_chat_completion with the GGUF's own chat template, greedy.

    `force_end_after=k` makes the k+1-th generated token the end-of-turn token (a random tiny model never
    says it by itself), so the answer shows whether llama.cpp stops there and hides it from the text.
    """
    seen: dict = {"forced_steps": 0}

    def processor(input_ids, scores):
        if "prompt_ids" not in seen:
            seen["prompt_ids"] = [int(t) for t in input_ids]
        seen["all_ids"] = [int(t) for t in input_ids]
        if force_end_after is not None and len(input_ids) - len(seen["prompt_ids"]) >= force_end_after:
            seen["forced_steps"] += 1  # more than one: generation went on past the end-of-turn token
            forced = np.full_like(scores, -np.inf)
            forced[end_id] = 0.0
            return forced
        return scores

    llm.reset()
    response = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0, top_k=1,
                                          seed=0, logits_processor=[processor])
    choice = response["choices"][0]
    return {
        "text": choice["message"]["content"],
        "finish_reason": choice["finish_reason"],
        "completion_tokens": response["usage"]["completion_tokens"],
        "prompt_ids": seen.get("prompt_ids", []),
        "generated_ids": seen.get("all_ids", [])[len(seen.get("prompt_ids", [])):],  # before the last step's token
        "forced_steps": seen["forced_steps"],
    }


def end_of_turn_ids(llm) -> tuple[int, int]:
    """llama.cpp's EOS and EOT token ids (-1 where the vocab has none)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return int(llama_cpp.llama_vocab_eos(vocab)), int(llama_cpp.llama_vocab_eot(vocab))


def is_end_of_generation(llm, token_ids: list[int]) -> dict[str, bool]:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return {str(t): bool(llama_cpp.llama_vocab_is_eog(vocab, t)) for t in token_ids}


def main() -> None:
    request = json.load(sys.stdin)
    llm = load(request["gguf"], request.get("n_ctx", 512))
    eos_id, eot_id = end_of_turn_ids(llm)
    answer: dict = {"eos_id": eos_id, "eot_id": eot_id, "n_vocab": llm.n_vocab(),
                    "eog": is_end_of_generation(llm, request.get("check_eog", []))}
    answer["tokens"], answer["tokens_plain"] = tokenize(llm, request.get("tokenize", []))
    answer["greedy"], answer["margins"], answer["first_logits"] = [], [], []
    for item in request.get("greedy", []):
        tokens, margins, first = greedy(llm, item["ids"], item["n"])
        answer["greedy"].append(tokens)
        answer["margins"].append(margins)
        answer["first_logits"].append(first)
    if request.get("chat"):
        spec = request["chat"]
        end_id = spec.get("end_id", eot_id if eot_id >= 0 else eos_id)
        answer["chat"] = chat(llm, spec["messages"], spec.get("max_tokens", 32), spec.get("force_end_after"), end_id)
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
