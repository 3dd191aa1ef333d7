"""Batching keeps the maths: packed == unpacked, accumulated == one big batch."""
from __future__ import annotations

import copy

import pytest
import torch
from helpers import build_tiny_model, build_tokenizer

from tunewright.data.conversation import Conversation, Message
from tunewright.data.templates import tokenize_conversation
from tunewright.models import ensure_pad_token
from tunewright.train.batching import (
    collate,
    idle_micro_batch,
    micro_batches,
    pack_rows,
    process_share,
    step_example_ids,
)
from tunewright.train.loop import TokenLoss


def _examples(tokenizer, n=12):
    out = []
    for i in range(n):
        conv = Conversation((Message("user", f"What is {i} times {i + 3}?" + " please" * (i % 4)),
                             Message("assistant", f"{i} times {i + 3} is {i * (i + 3)}." + " Indeed." * (i % 3))))
        out.append(tokenize_conversation(tokenizer, conv))
    return out


@pytest.fixture(scope="module")
def tok_model():
    tok = build_tokenizer("chatml")
    ensure_pad_token(tok)
    model = build_tiny_model(tok, seed=1)
    model.eval()
    return tok, model


def test_pack_rows_keeps_every_example_within_row_length(tok_model):
    tok, _ = tok_model
    exs = _examples(tok, 20)
    rows = pack_rows(exs, 96)
    assert sorted(id(e) for r in rows for e in r) == sorted(id(e) for e in exs)
    assert all(sum(len(e.input_ids) for e in r) <= 96 for r in rows)
    assert len(rows) < len(exs)  # something was actually packed


def test_packed_rows_give_each_example_the_logits_it_gets_alone(tok_model):
    tok, model = tok_model
    exs = _examples(tok, 3)
    mb = collate([exs], tok.pad_token_id)  # one row holding all three examples
    with torch.no_grad():
        packed = model(input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False).logits[0]
        offset = 0
        for ex in exs:
            alone = model(input_ids=torch.tensor([ex.input_ids]), use_cache=False).logits[0]
            n = len(ex.input_ids)
            torch.testing.assert_close(packed[offset:offset + n], alone, atol=1e-5, rtol=1e-4)
            offset += n


def test_packed_loss_equals_unpacked_loss(tok_model):
    tok, model = tok_model
    exs = _examples(tok, 12)
    loss = TokenLoss(model)
    assert loss.fast
    totals = {}
    for packing in (False, True):
        mbs = micro_batches(exs, tok.pad_token_id, token_budget=256, packing=packing, row_len=128)
        with torch.no_grad():
            s = sum(loss(m.input_ids, m.position_ids, m.labels) for m in mbs)
        totals[packing] = (s / sum(m.trained_tokens for m in mbs)).item()
        if packing:
            assert len(mbs[0].input_ids) < len(exs)
    assert totals[True] == pytest.approx(totals[False], rel=1e-5)


def test_chunked_head_path_equals_full_logits_path(tok_model):
    tok, model = tok_model
    mb = micro_batches(_examples(tok, 6), tok.pad_token_id, 512, True, 128)[0]
    with torch.no_grad():
        fast = TokenLoss(model, chunked=True)(mb.input_ids, mb.position_ids, mb.labels)
        full = TokenLoss(model, chunked=False)(mb.input_ids, mb.position_ids, mb.labels)
    assert fast.item() == pytest.approx(full.item(), rel=1e-5)


def _one_step_grads(model, exs, pad_id, budget):
    model = copy.deepcopy(model)
    model.train()
    loss = TokenLoss(model)
    mbs = micro_batches(exs, pad_id, budget, packing=False, row_len=128)
    total = sum(m.trained_tokens for m in mbs)
    for m in mbs:
        (loss(m.input_ids, m.position_ids, m.labels) / total).backward()
    return len(mbs), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_accumulation_matches_one_big_batch(tok_model):
    tok, model = tok_model
    exs = _examples(tok, 8)
    n_big, big = _one_step_grads(model, exs, tok.pad_token_id, budget=100_000)
    n_small, small = _one_step_grads(model, exs, tok.pad_token_id, budget=1)
    assert n_big == 1 and n_small >= 4
    for name in big:
        torch.testing.assert_close(small[name], big[name], atol=1e-6, rtol=1e-4)


def test_data_order_is_a_seeded_function_of_the_step():
    a = [step_example_ids(50, 8, seed=3, step=s)[1] for s in range(14)]
    b = [step_example_ids(50, 8, seed=3, step=s)[1] for s in range(14)]
    assert a == b
    first_epoch = sorted(i for ids in a[:7] for i in ids)
    assert first_epoch == list(range(50))  # each example once per epoch
    assert a[7] != a[0]  # reshuffled next epoch


def test_packed_rows_are_balanced_so_little_is_padding(tok_model):
    tok, _ = tok_model
    exs = _examples(tok, 40)
    total = sum(len(e.input_ids) for e in exs)
    row_len = max(len(e.input_ids) for e in exs) * 6  # about 7 examples per row, as on the example data
    mbs = micro_batches(exs, tok.pad_token_id, token_budget=100_000, packing=True, row_len=row_len)
    padded = sum(m.padded_tokens for m in mbs)
    assert sum(m.real_tokens for m in mbs) == total
    assert padded - total < 0.06 * padded, f"pad share {(padded - total) / padded:.0%}"


def test_process_shares_split_a_step_and_can_be_empty():
    _, ids = step_example_ids(9, 8, seed=0, step=1)  # 9 examples, batch 8: the second step holds one
    shares = [process_share(ids, rank, 2) for rank in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(ids) and len(ids) == 1
    assert [] in shares, "with fewer examples than processes some process gets none"


@pytest.mark.parametrize("chunked", [True, False])
def test_idle_micro_batch_reaches_every_parameter_with_zero_gradient(tok_model, chunked):
    # DDP all-reduces each parameter's gradient once its hook fires: a process with no examples must
    # still produce a gradient for every parameter (or the others wait forever), and it must be zero
    tok, model = tok_model
    model = copy.deepcopy(model).train()
    mb = idle_micro_batch(tok.pad_token_id)
    assert mb.trained_tokens == 0 and mb.real_tokens == 0
    loss = TokenLoss(model, chunked=chunked)(mb.input_ids, mb.position_ids, mb.labels)
    loss.backward()
    assert loss.item() == 0.0
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient: DDP would wait for it"
        assert not p.grad.any(), name


def test_prompt_weight_makes_prompt_tokens_targets_at_that_weight(tok_model):
    tok, _ = tok_model
    exs = _examples(tok, 3)
    plain, weighted = collate([exs], tok.pad_token_id), collate([exs], tok.pad_token_id, prompt_weight=0.25)
    assert plain.weights is None
    answer = plain.labels != -100
    # answer tokens keep weight 1, the same targets, and are still what a step divides by
    assert weighted.trained_tokens == plain.trained_tokens == int(answer.sum())
    assert torch.equal(weighted.labels[answer], plain.labels[answer])
    assert torch.all(weighted.weights[answer] == 1.0)
    prompt = (weighted.labels != -100) & ~answer
    assert torch.equal(weighted.labels[prompt], weighted.input_ids[prompt])
    assert torch.all(weighted.weights[prompt] == 0.25)
    # each example's first token is never a target of the example before it in the row
    starts = [0, len(exs[0].input_ids), len(exs[0].input_ids) + len(exs[1].input_ids)]
    assert all(weighted.labels[0, s] == -100 and weighted.weights[0, s] == 0 for s in starts)
    assert int(prompt.sum()) == sum(len(e.input_ids) for e in exs) - 3 - plain.trained_tokens


@pytest.mark.parametrize("chunked", [True, False])
def test_prompt_weighted_loss_is_answer_loss_plus_weight_times_prompt_loss(tok_model, chunked):
    tok, model = tok_model
    exs = _examples(tok, 4)
    plain, weighted = collate([exs], tok.pad_token_id), collate([exs], tok.pad_token_id, prompt_weight=0.1)
    everything = collate([exs], tok.pad_token_id, prompt_weight=1.0)
    loss = TokenLoss(model, chunked=chunked)
    with torch.no_grad():
        answer = loss(plain.input_ids, plain.position_ids, plain.labels)
        total = loss(everything.input_ids, everything.position_ids, everything.labels, weights=everything.weights)
        mixed = loss(weighted.input_ids, weighted.position_ids, weighted.labels, weights=weighted.weights)
    assert total.item() > answer.item() > 0
    assert mixed.item() == pytest.approx(answer.item() + 0.1 * (total.item() - answer.item()), rel=1e-5)
