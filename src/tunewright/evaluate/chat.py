"""`tunewright chat`: talk to a run or model in the terminal, tokens streamed as they are generated.

`--prompt` answers once and exits (scripts, smoke tests); `--base` also shows the base model's
answer. Each side keeps its own conversation, so a multi-turn comparison is two honest chats.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import Iterator

from rich.console import Console

from ..data.templates import generation_prompt_ids
from ..errors import UserError
from .generate import SamplingSettings, generation_config, model_device
from .sides import TUNED, Side, load_sides

HELP = "commands: /reset starts over, /exit (or Ctrl-D) quits"
console = Console(highlight=False)


def stream_answer(side: Side, messages: list[dict], settings: SamplingSettings) -> Iterator[str]:
    """Text pieces of the model's answer to `messages`, as generation produces them."""
    import torch
    from transformers import TextIteratorStreamer

    tokenizer = side.tokenizer
    ids = torch.tensor([generation_prompt_ids(tokenizer, messages)])
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with side.active() as model, torch.inference_mode():
                model.generate(input_ids=ids.to(model_device(model)), attention_mask=torch.ones_like(ids).to(model_device(model)),
                               generation_config=generation_config(tokenizer, settings), streamer=streamer)
        except BaseException as e:  # re-raised in the caller's thread below
            failure.append(e)
            streamer.end()  # unblock the reader

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    yield from streamer
    worker.join()
    if failure:
        raise failure[0]


@dataclass
class ChatSession:
    """One conversation per side; `send` adds a user turn and each side's answer."""

    sides: list[Side]
    settings: SamplingSettings
    system: str | None = None
    histories: dict[str, list[dict]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        start = [{"role": "system", "content": self.system}] if self.system else []
        self.histories = {side.key: list(start) for side in self.sides}

    def send(self, text: str, printer: "_Printer | None" = None) -> dict[str, str]:
        """Answer `text` on every side (tuned first), streaming each answer through `printer`."""
        answers = {}
        for side in sorted(self.sides, key=lambda s: s.key != TUNED):
            history = self.histories[side.key]
            history.append({"role": "user", "content": text})
            if printer:
                printer.start(side)
            pieces = []
            for piece in stream_answer(side, history, self.settings):
                pieces.append(piece)
                if printer:
                    printer.write(piece)
            if printer:
                printer.finish()
            answers[side.key] = "".join(pieces).strip()
            history.append({"role": "assistant", "content": answers[side.key]})
        return answers


class _Printer:
    """Streams answers to stdout, each under a header when several sides answer ("base (model)")."""

    def __init__(self, labelled: bool, prompt: str = ""):
        self.labelled = labelled
        self.prompt = prompt  # shown before an unlabelled answer in interactive mode

    def start(self, side: Side) -> None:
        if self.labelled:
            console.print(f"[bold cyan]{side.key}[/] [dim]({side.label})[/]")
        elif self.prompt:
            console.print(self.prompt, end="")

    def write(self, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    def finish(self) -> None:
        sys.stdout.write("\n")
        sys.stdout.flush()


def chat(run_or_model: str, prompt: str | None = None, system: str | None = None, show_base: bool = False,
         max_new_tokens: int = 256, temperature: float = 0.0) -> dict[str, str] | None:
    """Chat with a run or model; with `prompt`, answer once and return {side: answer}."""
    if max_new_tokens < 1 or temperature < 0:
        raise UserError("--max-new-tokens must be at least 1 and --temperature not negative", "use e.g. --max-new-tokens 256 --temperature 0")
    sides = load_sides(run_or_model, compare_base=show_base, flag="--base")
    session = ChatSession(sides, SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature), system)
    if prompt is not None:
        return _answer_once(session, prompt)
    _interactive(session)
    return None


def _answer_once(session: ChatSession, prompt: str) -> dict[str, str]:
    return session.send(prompt, _Printer(labelled=len(session.sides) > 1))


def _interactive(session: ChatSession) -> None:
    labels = " vs ".join(f"{s.key}: {s.label}" for s in sorted(session.sides, key=lambda s: s.key != TUNED))
    console.print(f"[bold]tunewright chat[/] · {labels}\n[dim]{HELP}[/]")
    while True:
        try:
            text = console.input("[bold green]you>[/] ")
        except EOFError:
            console.print()
            return
        command = text.strip().lower()
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            session.reset()
            console.print("[dim]conversation cleared[/]")
            continue
        if not command:
            continue
        if command.startswith("/"):
            console.print(f"[yellow]unknown command {text.strip()}[/] [dim]({HELP})[/]")
            continue
        session.send(text, _Printer(labelled=len(session.sides) > 1, prompt="[bold blue]model>[/] "))


__all__ = ["ChatSession", "chat", "stream_answer"]
