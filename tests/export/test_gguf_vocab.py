"""The tokenizer half of GGUF export, and the Ollama Modelfile, for every family in tests/families.py.

Each family's tokenizer is written into a GGUF file (tokenizer keys plus one tensor: the vocabulary alone
decides what a reader rebuilds), read back by transformers' GGUF loader (with the Phi-3 whitespace rule tunewright
puts back when it trains from a GGUF), and must tokenize every test text exactly as the original does; real
llama.cpp must too. The Modelfile's TEMPLATE, rendered by tests/go_template.py as Ollama would,
must give the text the Hugging Face chat template gives.
"""
from __future__ import annotations

import pytest
from families import FAMILIES, FAMILY_SPECS, build_family_tokenizer
from go_template import render
from llamacpp import legacy_sentencepiece, prepends_first_only

from tunewright.errors import UserError
from tunewright.export import gguf_vocab
from tunewright.export.gguf import general_name
from tunewright.export.gguf_vocab import (
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    USER_DEFINED,
    build_vocab,
    merge_rank_scores,
    write_vocab,
)
from tunewright.export.ollama import (
    default_system_prompt,
    go_template_for,
    modelfile_text,
)
from tunewright.gguf_config import restore_phi3_rstrip

GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
             "gemma3_text": "gemma3", "phi3": "phi3"}
TEXTS = [
    "hello world", "The quick brown fox jumps over the lazy dog.", "  two leading spaces", " x", "trailing  ",
    "Café crème brûlée, naïve façade; Straße", "emoji 🙂🚀 and 漢字", "def f(x):\n\treturn x**2  # 1234567\n",
    "\n\nnew lines\n", "os.path.join('a', \"b\") -> 'a/b'", "",
]
PRE_NAMES = {"smollm2": "smollm", "llama3": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}


def write_tokenizer_gguf(tokenizer, arch: str, path, name: str = "tiny-model"):
    """A GGUF file holding only the vocabulary (and one tensor, as every GGUF has)."""
    import gguf
    import numpy as np

    vocab = build_vocab(tokenizer, len(tokenizer))
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(general_name(name, arch, tokenizer, vocab.tokens))  # Phi-3: says phi3, as an export does
    write_vocab(writer, vocab)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokenizer), 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return vocab


def family_texts(tokenizer, name: str) -> list[str]:
    """The plain texts, the specials alone and glued to text, and a rendered two-turn chat."""
    spec = FAMILY_SPECS[name]
    specials = [spec.end_of_turn] + [s for s in spec.specials[:3] if s != spec.end_of_turn]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"},
                                          {"role": "assistant", "content": "It is 4."},
                                          {"role": "user", "content": "Thanks!"}],
                                         tokenize=False, add_generation_prompt=True)
    return TEXTS + specials + [f"{s}hello there" for s in specials] + [f"say hi{spec.end_of_turn}", chat]


def loaded_as_tunewright_does(gguf_path, folder):
    """transformers' GGUF loader's tokenizer, saved and reloaded with the repair tunewright makes when it trains
    from a GGUF (models.py): llama.cpp's Phi-3 whitespace rule, which the loader leaves out."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(folder)
    restore_phi3_rstrip(folder, gguf_path)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module", params=FAMILIES)
def family_gguf(request, tmp_path_factory):
    name = request.param
    tokenizer = build_family_tokenizer(name)
    folder = tmp_path_factory.mktemp(f"vocab-{name}")
    vocab = write_tokenizer_gguf(tokenizer, GGUF_ARCH[FAMILY_SPECS[name].model_type], folder / "vocab.gguf",
                                 f"tiny-{name}")
    back = loaded_as_tunewright_does(folder / "vocab.gguf", folder / "back")
    return name, tokenizer, vocab, back, folder / "vocab.gguf"


def test_gguf_tokenizer_round_trip_tokenizes_like_the_original(family_gguf):
    name, tokenizer, _, back, _ = family_gguf
    for text in family_texts(tokenizer, name):
        for special in (True, False):
            expected = tokenizer(text, add_special_tokens=special)["input_ids"]
            got = back(text, add_special_tokens=special)["input_ids"]
            assert got == expected, (name, text, special, back.convert_ids_to_tokens(got),
                                     tokenizer.convert_ids_to_tokens(expected))
    assert back.decode(back("Café 🙂 ok")["input_ids"], skip_special_tokens=True).strip() == "Café 🙂 ok"


def test_gguf_tokenizer_metadata_per_family(family_gguf):
    """What llama.cpp reads: the tokenizer model, pre-tokenizer, scores, token types, special ids, end of turn."""
    from gguf import GGUFReader

    name, tokenizer, vocab, _, path = family_gguf
    spec = FAMILY_SPECS[name]
    fields = GGUFReader(path).fields
    value = lambda key: fields[key].contents()
    eot = tokenizer.convert_tokens_to_ids(spec.end_of_turn)
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert value("tokenizer.ggml.add_bos_token") is spec.add_bos
    if eot != tokenizer.eos_token_id:
        assert value("tokenizer.ggml.eot_token_id") == eot
    assert spec.end_of_turn in vocab.stop_tokens
    if spec.tokenizer_kind == "bpe":
        assert value("tokenizer.ggml.model") == "gpt2"
        assert value("tokenizer.ggml.pre") == PRE_NAMES[name]
        assert "tokenizer.ggml.scores" not in fields
        return
    types, tokens = value("tokenizer.ggml.token_type"), value("tokenizer.ggml.tokens")
    scores = value("tokenizer.ggml.scores")
    assert value("tokenizer.ggml.model") == "llama"
    assert len(scores) == len(tokens) == len(types) == len(tokenizer)
    assert [tokens[i] for i, t in enumerate(types) if t == BYTE] == [f"<0x{b:02X}>" for b in range(256)]
    assert types[tokenizer.unk_token_id] == UNKNOWN and types[tokenizer.bos_token_id] == CONTROL
    special = tokenizer.added_tokens_decoder[eot].special  # Gemma's turn markers are added but not special
    assert types[eot] == (CONTROL if special else USER_DEFINED)
    assert value("tokenizer.ggml.add_space_prefix") is (not name.startswith("gemma"))
    normal = [s for s, t in zip(scores, types) if t == NORMAL]
    assert len(set(normal)) == len(normal), "every normal piece has its own merge priority"


def test_phi3_fixture_tokenizes_as_the_real_phi3():
    """Phi-3's tokenizer.json puts ▁ before every stretch of text between added tokens (the legacy Llama normalizer)
    and drops the whitespace after </s> and its chat tokens (rstrip), <|endoftext|> aside. llama.cpp assumes both
    for a GGUF named phi3 (so the exported name must say phi3), transformers' GGUF loader the first."""
    tok = build_family_tokenizer("phi3")
    plain = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    ids = lambda *names: [tok.convert_tokens_to_ids(n) for n in names]
    chat = "<|user|>\nhello world<|end|>\n<|assistant|>\nhi</s>  there<|endoftext|> x"
    assert plain(chat) == (ids("<|user|>") + plain("hello world") + ids("<|end|>", "<|assistant|>") + plain("hi")
                           + ids("</s>") + plain("there") + ids("<|endoftext|>") + plain(" x"))
    assert "".join(tok.convert_ids_to_tokens(plain("hello world"))) == "\u2581hello\u2581world"
    assert "".join(tok.convert_ids_to_tokens(plain(" x"))) == "\u2581\u2581x"
    assert tok("hi")["input_ids"] == plain("hi"), "Phi-3 adds no BOS"
    assert tok.decode(plain("hello world")) == "hello world"
    assert "</s>" not in tok.all_special_tokens  # added, matched in any text, but not special
    assert general_name("run", "phi3", tok, build_vocab(tok, len(tok)).tokens) == "run (phi3)"
    assert general_name("tiny-phi3", "phi3", tok, build_vocab(tok, len(tok)).tokens) == "tiny-phi3"


def test_merge_rank_scores_rank_pieces_by_their_first_merge():
    scores = merge_rank_scores([("t", "h"), ("th", "e"), ("a", "b"), ("t", "he")])
    assert scores == {"th": 0.0, "the": -1.0, "ab": -2.0}


def test_gguf_vocab_refuses_a_wordpiece_tokenizer_with_the_fix():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(UserError) as err:
        gguf_vocab.build_vocab(tokenizer, 2)
    assert "WordPiece" in str(err.value) and "convert_hf_to_gguf.py" in str(err.value)


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name a color."}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a color."}],
]


@pytest.mark.parametrize("name", FAMILIES)
def test_modelfile_template_renders_like_the_hf_chat_template(name):
    """Ollama's rendering (BOS aside: llama.cpp adds it) equals the HF template's, system folding included."""
    tokenizer = build_family_tokenizer(name)
    template = go_template_for(tokenizer.chat_template, tokenizer)
    assert template is not None, name
    system = default_system_prompt(tokenizer)
    checked = 0
    for messages in CONVERSATIONS:
        if messages[0]["role"] == "system" and name == "gemma2":
            continue  # Gemma 2's own template raises on a system message; there is nothing to match
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if FAMILY_SPECS[name].add_bos:
            assert expected.startswith(tokenizer.bos_token)
            expected = expected[len(tokenizer.bos_token):]
        assert render(template, messages, system) == expected, (name, messages)
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("name", FAMILIES)
def test_modelfile_stops_at_the_family_end_of_turn(name):
    tokenizer = build_family_tokenizer(name)
    vocab = build_vocab(tokenizer, len(tokenizer))
    text = modelfile_text("m.gguf", tokenizer.chat_template, vocab.stop_tokens, default_system_prompt(tokenizer), tokenizer)
    assert text.startswith("FROM ./m.gguf\n") and 'TEMPLATE """' in text
    assert f'PARAMETER stop "{FAMILY_SPECS[name].end_of_turn}"' in text
    if name in ("smollm2", "qwen2"):
        assert 'SYSTEM """' in text  # the template's default system prompt, used when a chat has none


@pytest.mark.parametrize("name", FAMILIES)
def test_llamacpp_tokenizes_like_the_original(name, tmp_path):
    """Real llama.cpp, on the full f16 export of a tiny model of the family, splits every test text as HF does.

    The one allowed difference is llama.cpp's documented sentencepiece rule for Metaspace-"first" tokenizers
    (Mistral v0.3): text that starts with a space, or follows a special token, gets sentencepiece's ▁ there.
    Those texts must then equal the legacy tokenization exactly, and every other text must match HF's.
    """
    from families import build_family_model
    from llamacpp import require_llama, run_llama

    from tunewright.export.gguf import write_gguf

    require_llama()
    tokenizer = build_family_tokenizer(name)
    path = tmp_path / f"{name}.gguf"
    # named as `tunewright export` names a folder: for Phi-3, llama.cpp then strips whitespace after its special
    # tokens, as the real Phi-3 tokenizer's rstrip does (llama-vocab.cpp keys this on general.name)
    write_gguf(build_family_model(name, tokenizer), tokenizer, path, "f16", name=f"tiny-{name}")
    texts = [t for t in family_texts(tokenizer, name) if t]
    answer = run_llama({"gguf": str(path), "tokenize": texts, "n_ctx": 256})
    legacy = legacy_sentencepiece(tokenizer) if prepends_first_only(tokenizer) else None
    specials = set(tokenizer.all_special_tokens) | set(FAMILY_SPECS[name].specials)
    exact = 0
    for text, got, got_plain in zip(texts, answer["tokens"], answer["tokens_plain"]):
        expected, expected_plain = tokenizer(text)["input_ids"], tokenizer(text, add_special_tokens=False)["input_ids"]
        if (got, got_plain) == (expected, expected_plain):
            exact += 1
            continue
        assert legacy is not None and (text[0].isspace() or any(s in text for s in specials)), (
            name, text, tokenizer.convert_ids_to_tokens(got), tokenizer.convert_ids_to_tokens(expected))
        assert got == legacy(text)["input_ids"] and got_plain == legacy(text, add_special_tokens=False)["input_ids"]
    assert exact >= len(texts) // 2, (name, exact, len(texts))
    eot = tokenizer.convert_tokens_to_ids(FAMILY_SPECS[name].end_of_turn)
    assert answer["eot_id"] == eot or (eot == tokenizer.eos_token_id and answer["eos_id"] == eot)
