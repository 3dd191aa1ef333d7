"""Dynamic batching: one worker thread decodes every request, many at a time.

Requests wait in a queue. The worker keeps one running batch with a shared KV cache: each loop it
admits waiting requests that can share the batch (same base weights; same adapter where adapters
cannot mix), prefills them left-padded, splices their cache rows into the running cache, then runs
one decode step for all rows. Finished rows leave at once, so a request arriving mid-batch joins
the next forward pass instead of waiting for the whole batch. Each request keeps its own sampling
settings, seed, stop strings and token budget.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..evaluate.generate import left_pad
from .kvbatch import RunningBatch
from .registry import BASE_ADAPTER, ServedModel
from .sampling import pick_tokens

log = logging.getLogger("tunewright.serve")


@dataclass
class GenerationRequest:
    """One completion to produce; `sink` receives events on the worker thread."""

    served: ServedModel
    prompt_ids: list[int]
    max_tokens: int
    sink: Callable[[dict], None]
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cancelled: bool = False
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class Sequence:
    """A request in the running batch: what it has produced so far."""

    request: GenerationRequest
    generator: object | None
    position: int  # position id of the next token fed to the model
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters already sent to the client
    finish_reason: str | None = None

    @property
    def hold_back(self) -> int:
        """Characters kept unsent because they might still become a stop string."""
        return max((len(s) for s in self.request.stop), default=1) - 1


class Engine:
    """The worker thread and its queue; `submit` is safe to call from any thread."""

    def __init__(self, max_batch_size: int = 16) -> None:
        self.max_batch_size = max(1, max_batch_size)
        self._waiting: list[GenerationRequest] = []
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Condition()
        self._batch: RunningBatch | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="tunewright-engine", daemon=True)
        self.steps = 0  # forward passes run, for /health and tests

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        self._thread.join(timeout=10)

    def submit(self, request: GenerationRequest) -> GenerationRequest:
        with self._wake:
            self._waiting.append(request)
            self._wake.notify_all()
        return request

    def call(self, fn: Callable[[], object]) -> Future:
        """Run `fn` on the worker thread between batches (e.g. loading a model), so it never races a forward pass."""
        future: Future = Future()
        self._calls.put((fn, future))
        with self._wake:
            self._wake.notify_all()
        return future

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._batch.rows) if self._batch else 0

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # --- the worker thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and not self._waiting and self._batch is None and self._calls.empty():
                    self._wake.wait(timeout=1.0)
                if self._stopped:
                    return
            if self._batch is None:
                self._run_calls()
            try:
                self._admit()
                if self._batch is not None:
                    self._step()
            except Exception as exc:  # a bug or OOM in one batch must not take the server down
                log.exception("generation failed")
                self._fail_batch(exc)

    def _run_calls(self) -> None:
        while not self._calls.empty():
            fn, future = self._calls.get()
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, who reports it
                future.set_exception(exc)

    def _take_admissible(self) -> list[GenerationRequest]:
        """Waiting requests that may join now, oldest first; other models' requests are not starved."""
        with self._wake:
            self._waiting = [r for r in self._waiting if not r.cancelled]
            if not self._waiting or not self._calls.empty():
                return []
            if self._batch is None:
                key = self._waiting[0].served.batch_key
            else:
                key = self._batch.key
                if any(r.served.batch_key != key for r in self._waiting):
                    return []  # let the running batch drain so the other model gets its turn
            room = self.max_batch_size - self.running
            taken = [r for r in self._waiting if r.served.batch_key == key][:room]
            self._waiting = [r for r in self._waiting if r not in taken]
            return taken

    def _admit(self) -> None:
        new = self._take_admissible()
        if new:
            self._admit_group(new)

    def _admit_group(self, new: list[GenerationRequest]) -> None:
        """Prefill `new` together and join the running batch; whatever fails fails only its own request."""
        rows = self._new_rows(new)
        if not rows:
            return
        try:
            fresh, logits = self._prefill(rows)
        except Exception as exc:
            if len(rows) > 1:  # one prompt may be to blame: give each its own prefill
                log.warning("prefill of %d requests failed (%s); retrying them one at a time", len(rows), exc)
                for row in rows:
                    self._admit_group([row.request])
                return
            log.exception("prefill failed")
            self._fail_row(rows[0], exc)
            return
        self.steps += 1
        self._accept_tokens(fresh, logits)
        try:
            self._batch = fresh if self._batch is None else self._batch.merge(fresh)
        except Exception as exc:  # the running batch may be half-merged: fail everyone, visibly
            for row in rows:
                self._fail_row(row, exc)
            raise
        self._drop_finished()

    def _new_rows(self, requests: list[GenerationRequest]) -> list[Sequence]:
        """A row per request; a request whose own settings cannot be set up (e.g. its seed) gets an error alone."""
        rows = []
        for request in requests:
            row = Sequence(request, None, position=len(request.prompt_ids))
            try:
                row.generator = self._generator(request)
            except Exception as exc:
                log.warning("request %s refused: %s: %s", request.id, type(exc).__name__, exc)
                self._fail_row(row, exc)
                continue
            rows.append(row)
        return rows

    def _prefill(self, rows: list[Sequence]):
        """Run the prompts of `rows` left-padded through the model into a fresh cache: (batch, last logits)."""
        import torch

        requests = [row.request for row in rows]
        group = requests[0].served.group
        ids, mask = left_pad([r.prompt_ids for r in requests], pad_id=0)
        ids, mask = ids.to(group.device), mask.to(group.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        fresh = RunningBatch.empty(requests[0].served.batch_key, group.device)
        with torch.inference_mode(), self._adapter_context(requests):
            out = group.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=fresh.cache,
                              use_cache=True, logits_to_keep=1, **self._adapter_kwargs(requests))
        fresh.attach(rows, mask)
        return fresh, out.logits[:, -1, :]

    def _step(self) -> None:
        import torch

        batch = self._batch
        for row in batch.rows:
            if row.request.cancelled:
                row.finish_reason = "cancelled"
        self._drop_finished()
        if self._batch is None:
            return
        batch = self._batch
        requests = [row.request for row in batch.rows]
        with torch.inference_mode(), self._adapter_context(requests):
            ids, mask, positions = batch.decode_inputs()
            out = batch.group.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=batch.cache,
                                    use_cache=True, **self._adapter_kwargs(requests))
        self.steps += 1
        batch.mask = mask
        self._accept_tokens(batch, out.logits[:, -1, :])
        self._drop_finished()

    def _adapter_kwargs(self, requests: list[GenerationRequest]) -> dict:
        """Mixed batches name each row's adapter; PEFT applies it to that row only."""
        served = requests[0].served
        if served.group.is_peft and served.batch_key[1] is None:
            return {"adapter_names": [r.served.adapter or BASE_ADAPTER for r in requests]}
        return {}

    def _adapter_context(self, requests: list[GenerationRequest]):
        """A batch of one DoRA adapter (which PEFT cannot mix) runs with just that adapter switched on."""
        served = requests[0].served
        adapter = served.batch_key[1]
        if adapter is not None:
            served.group.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def _generator(self, request: GenerationRequest):
        if request.seed is None or request.temperature == 0:
            return None
        import torch

        return torch.Generator(device=request.served.group.device).manual_seed(request.seed)

    def _accept_tokens(self, batch: RunningBatch, logits) -> None:
        """Pick each row's next token, update its text, and decide whether it is finished."""
        tokens = self._pick_tokens(batch, logits)
        for row, token in zip(batch.rows, tokens):
            if row.finish_reason is not None:
                continue
            try:
                self._advance(row, token)
            except Exception as exc:  # e.g. its tokenizer or its sink broke: that row alone ends
                log.exception("request %s failed", row.request.id)
                self._fail_row(row, exc)
        batch.set_last_tokens(tokens)

    def _pick_tokens(self, batch: RunningBatch, logits) -> list[int]:
        """All rows at once; if that fails, row by row, so one row's bad sampling fails only that row."""
        vocab = batch.group.vocab_size
        try:
            return pick_tokens(logits, batch.rows, vocab)
        except Exception:
            pass
        tokens = []
        for i, row in enumerate(batch.rows):
            try:
                tokens.extend(pick_tokens(logits[i:i + 1], [row], vocab))
            except Exception as exc:
                log.warning("sampling failed for request %s: %s: %s", row.request.id, type(exc).__name__, exc)
                self._fail_row(row, exc)
                tokens.append(0)  # never fed: the row leaves before the next step
        return tokens

    def _fail_row(self, row: Sequence, exc: Exception) -> None:
        """End one request with an error event; a sink that itself fails is only logged."""
        row.finish_reason = "error"
        try:
            row.request.sink({"type": "error", "message": f"generation failed: {type(exc).__name__}: {exc}"})
        except Exception:
            log.exception("could not report the failure of request %s", row.request.id)

    def _advance(self, row: Sequence, token: int) -> None:
        request, served = row.request, row.request.served
        row.tokens.append(token)
        row.position += 1
        if token in served.stop_ids:
            row.finish_reason = "stop"
        else:
            with served.tokenizer_lock:
                row.text = served.tokenizer.decode(row.tokens, skip_special_tokens=True)
            cut = _first_stop(row.text, request.stop, max(0, row.emitted - row.hold_back))
            if cut is not None:
                row.text, row.finish_reason = row.text[:cut], "stop"
            elif len(row.tokens) >= request.max_tokens or row.position >= served.context_length:
                row.finish_reason = "length"
        self._emit(row)

    def _emit(self, row: Sequence) -> None:
        end = len(row.text) if row.finish_reason else len(row.text) - row.hold_back
        # hold back half of a multi-byte character while more tokens may complete it; flush at the end
        while not row.finish_reason and end > row.emitted and row.text[end - 1] == "\ufffd":
            end -= 1
        if end > row.emitted:
            row.request.sink({"type": "delta", "text": row.text[row.emitted:end]})
            row.emitted = end
        if row.finish_reason and row.finish_reason not in ("cancelled", "error"):
            row.request.sink({"type": "done", "finish_reason": row.finish_reason, "text": row.text,
                              "prompt_tokens": len(row.request.prompt_ids), "completion_tokens": len(row.tokens)})

    def _drop_finished(self) -> None:
        batch = self._batch
        if batch is None:
            return
        keep = [i for i, row in enumerate(batch.rows) if row.finish_reason is None]
        if not keep:
            self._batch = None
        elif len(keep) < len(batch.rows):
            batch.select(keep)

    def _fail_batch(self, exc: Exception) -> None:
        if self._batch is not None:
            for row in self._batch.rows:
                if row.finish_reason is None:
                    self._fail_row(row, exc)
        self._batch = None


def _first_stop(text: str, stops: list[str], start: int) -> int | None:
    """Index of the earliest stop string in text[start:], if any."""
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else None
