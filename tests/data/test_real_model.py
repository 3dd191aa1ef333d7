"""The real embedded SmolLM2 tokenizer and chat template on all of the example data."""
from __future__ import annotations

from pathlib import Path

import pytest

from tunewright.config import load_config
from tunewright.data import load_conversations, prepare_data
from tunewright.data.templates import tokenize_conversation

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smollm2_renders_and_tokenizes_all_example_data():
    from tunewright.models import load_tokenizer, local_model_dir

    tok = load_tokenizer(local_model_dir("smollm2-135m-instruct"))
    rows = load_conversations(REPO / "examples" / "stdlib-qa")
    assert len(rows.conversations) == 600 and not rows.bad_rows
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for conv in rows.conversations:
        ex = tokenize_conversation(tok, conv)
        trained = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != -100]
        assert trained and len(ex.input_ids) <= 1024, conv.source
        # exactly the answers (every assistant turn) and their end-of-turn tokens are trained
        answers = "".join(m.content + "<|im_end|>" for m in conv.messages if m.role == "assistant")
        assert tok.decode(trained) == answers, conv.source
        assert trained[-1] == im_end

    cfg = load_config(REPO / "examples" / "stdlib-qa.yaml")
    cfg.data.train, cfg.data.validation = str(REPO / cfg.data.train), str(REPO / cfg.data.validation)
    data = prepare_data(cfg, tok)
    assert len(data.train) == 500 and len(data.validation) == 100
    assert data.report["truncated"] == 0 and data.report["dropped"] == 0
