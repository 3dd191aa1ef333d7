"""Tiny, randomly initialised models of every model family we support, with tokenizers of the family's kind.

Byte-level BPE families (SmolLM2, Llama 3, Qwen 2.5, Qwen 3) get a BPE trained here on the example data with the
family's real special tokens and pre-tokenizer regex; sentencepiece families (Mistral v0.3, Gemma 2/3, Phi-3) get a
small sentencepiece model trained at test time (~0.1 s) and wrapped in the family's transformers tokenizer class
(Phi-3: its own tokenizer.json pipeline, see _as_phi3), so a saved folder holds both tokenizer.json and
tokenizer.model.
Each chat template reproduces the real one's format (the tool-calling branches are left out); where it is the
model's own template verbatim, the source is named.
"""
from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "stdlib-qa"

FAMILIES = ["smollm2", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]

# HuggingFaceTB/SmolLM2-135M-Instruct tokenizer_config.json
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# meta-llama/Llama-3.2-1B-Instruct, without the tool-calling branches; the date is fixed so renders are stable
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# mistralai/Mistral-7B-Instruct-v0.3 (the system message goes into the LAST user message), without tools
MISTRAL_TEMPLATE = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
    {%- set ns.index = ns.index + 1 %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if (message == user_messages[-1]) and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

# Qwen/Qwen2.5-0.5B-Instruct, without tools: ChatML with a default system prompt
QWEN2_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Qwen/Qwen3-0.6B, without tools: past turns' reasoning is dropped, the last turn gets <think> blocks, and
# enable_thinking=false writes an empty think block into the generation prompt
QWEN3_TEMPLATE = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

# google/gemma-2-2b-it verbatim: no system role at all (it raises), roles must alternate
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# google/gemma-3-1b-it, text parts only: the system message is folded into the first user turn
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

# microsoft/Phi-3.5-mini-instruct verbatim: note the trailing eos_token when there is no generation prompt
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>"]


@dataclass(frozen=True)
class FamilySpec:
    """What a test needs to know about one model family."""

    model_type: str  # config.model_type as transformers writes it
    config_class: str  # transformers config class name
    end_of_turn: str  # the token that closes an assistant turn (the generation stop token)
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    has_system_role: bool
    chat_template: str
    tokenizer_kind: str  # "bpe" (byte-level) | "sentencepiece"
    specials: tuple[str, ...] = ()  # special tokens besides bos/eos/pad/unk
    add_bos: bool = False  # does tokenizer(text) prepend BOS
    model_class: str = "AutoModelForCausalLM"
    config_kwargs: dict = field(default_factory=dict)


FAMILY_SPECS: dict[str, FamilySpec] = {
    "smollm2": FamilySpec(
        "llama", "LlamaConfig", "<|im_end|>", "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>", True,
        SMOLLM2_TEMPLATE, "bpe", ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>"),
        config_kwargs={"tie_word_embeddings": True, "rope_theta": 100000.0},
    ),
    "llama3": FamilySpec(
        "llama", "LlamaConfig", "<|eot_id|>", "<|begin_of_text|>", "<|eot_id|>", None, None, True, LLAMA3_TEMPLATE,
        "bpe", ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|finetune_right_pad_id|>",
                "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"),
        add_bos=True,
        config_kwargs={"tie_word_embeddings": False, "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256}, "rope_theta": 500000.0},
    ),
    "mistral": FamilySpec(
        "mistral", "MistralConfig", "</s>", "<s>", "</s>", None, "<unk>", False, MISTRAL_TEMPLATE, "sentencepiece",
        ("[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
         "[/TOOL_RESULTS]"),
        add_bos=True, config_kwargs={"tie_word_embeddings": False, "sliding_window": None, "rope_theta": 1000000.0},
    ),
    "qwen2": FamilySpec(
        "qwen2", "Qwen2Config", "<|im_end|>", None, "<|im_end|>", "<|endoftext|>", None, True, QWEN2_TEMPLATE, "bpe",
        tuple(QWEN_SPECIALS), config_kwargs={"tie_word_embeddings": True, "rope_theta": 1000000.0},
    ),
    "qwen3": FamilySpec(
        "qwen3", "Qwen3Config", "<|im_end|>", None, "<|im_end|>", "<|endoftext|>", None, True, QWEN3_TEMPLATE, "bpe",
        tuple(QWEN_SPECIALS), config_kwargs={"tie_word_embeddings": True, "rope_theta": 1000000.0},
    ),
    "gemma2": FamilySpec(
        "gemma2", "Gemma2Config", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>", False, GEMMA2_TEMPLATE,
        "sentencepiece", ("<mask>", "<start_of_turn>", "<end_of_turn>"), add_bos=True,
        config_kwargs={"tie_word_embeddings": True, "sliding_window": 512, "query_pre_attn_scalar": 16,
                       "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
    ),
    "gemma3": FamilySpec(
        "gemma3_text", "Gemma3TextConfig", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>", False,
        GEMMA3_TEMPLATE, "sentencepiece", ("<mask>", "<start_of_turn>", "<end_of_turn>"), add_bos=True,
        config_kwargs={"tie_word_embeddings": True, "sliding_window": 512, "query_pre_attn_scalar": 16,
                       "layer_types": ["sliding_attention", "full_attention"]},
    ),
    "phi3": FamilySpec(
        "phi3", "Phi3Config", "<|end|>", "<s>", "<|endoftext|>", "<|endoftext|>", "<unk>", True, PHI3_TEMPLATE,
        "sentencepiece", ("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
                          "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>",
                          "<|placeholder6|>", "<|user|>"),
        config_kwargs={"tie_word_embeddings": False, "rope_theta": 10000.0},
    ),
}


def training_text() -> list[str]:
    """The example data's message texts: what every fixture tokenizer is trained on."""
    lines = []
    for name in ("train.jsonl", "test.jsonl"):
        for line in (EXAMPLES / name).read_text().splitlines():
            lines.extend(m["content"] for m in json.loads(line)["messages"])
    return lines + ["hello world", "the quick brown fox jumps over the lazy dog", "user", "model", "assistant"]


def _bpe_pre_tokenizer(name: str):
    from tokenizers import Regex, pre_tokenizers

    if name == "smollm2":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    regex = LLAMA3_REGEX if name == "llama3" else QWEN2_REGEX
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _build_bpe(name: str, spec: FamilySpec, vocab_size: int = 900):
    """Byte-level BPE; SmolLM2 has its specials first (ids 0..), Llama 3 and Qwen after the learned vocabulary."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=name == "llama3"))
    if name.startswith("qwen"):
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _bpe_pre_tokenizer(name)
    tok.decoder = decoders.ByteLevel()
    leading = list(spec.specials) if name == "smollm2" else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=leading,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    if name != "smollm2":
        tok.add_special_tokens(list(spec.specials))
    if name == "qwen3":  # Qwen3's think markers are added tokens that are NOT special (they survive skip_special)
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    if spec.add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, tok.token_to_id(spec.bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec.bos, eos_token=spec.eos, pad_token=spec.pad,
                                   unk_token=spec.unk, clean_up_tokenization_spaces=False)


def _train_sentencepiece(name: str, spec: FamilySpec) -> bytes:
    """A small sentencepiece model like the family's: BPE, byte fallback, its specials in the family's order."""
    import sentencepiece as spm

    buf = io.BytesIO()
    common = {"sentence_iterator": iter(training_text()), "model_writer": buf, "model_type": "bpe", "byte_fallback": True,
              "character_coverage": 1.0, "normalization_rule_name": "identity", "remove_extra_whitespaces": False,
              "split_digits": True, "num_threads": 1, "minloglevel": 2, "max_sentence_length": 16384}
    if name.startswith("gemma"):  # Gemma: pad 0, eos 1, bos 2, unk 3, then its turn markers; no dummy prefix
        spm.SentencePieceTrainer.train(**common, vocab_size=1000, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                                       pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
                                       user_defined_symbols=list(spec.specials), add_dummy_prefix=False)
    else:  # Llama/Mistral: unk 0, <s> 1, </s> 2; Mistral v0.3's control tokens follow; Phi-3 adds its own later
        controls = list(spec.specials) if name == "mistral" else []
        spm.SentencePieceTrainer.train(**common, vocab_size=1000 if name == "mistral" else 900, unk_id=0, bos_id=1,
                                       eos_id=2, pad_id=-1, control_symbols=controls, add_dummy_prefix=True)
    return buf.getvalue()


def _build_sentencepiece(name: str, spec: FamilySpec, workdir: Path):
    from transformers import GemmaTokenizer, LlamaTokenizer

    (workdir / "tokenizer.model").write_bytes(_train_sentencepiece(name, spec))
    cls = GemmaTokenizer if name.startswith("gemma") else LlamaTokenizer
    tok = cls.from_pretrained(workdir, bos_token=spec.bos, eos_token=spec.eos, unk_token=spec.unk,
                              pad_token=spec.pad if name != "phi3" else None, add_bos_token=spec.add_bos,
                              add_eos_token=False, legacy=False)
    return _as_phi3(tok, spec) if name == "phi3" else tok


# microsoft/Phi-3-mini-4k-instruct and Phi-3.5-mini-instruct tokenizer.json: the legacy Llama normalizer (▁ before
# every stretch of text between added tokens, no pre-tokenizer) and added tokens that strip the whitespace after
# them (rstrip: </s> and every chat token except <|endoftext|>); </s> is added but not special
PHI3_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}


def _as_phi3(base, spec: FamilySpec):
    """Phi-3's tokenizer over the trained pieces. transformers 5 loads a real Phi-3 (model_type phi3) as a plain
    TokenizersBackend that keeps tokenizer.json as written (LlamaTokenizer would rebuild Metaspace "first"), and
    saves it under that class name, as this fixture is saved."""
    from tokenizers import AddedToken, Tokenizer, decoders
    from transformers import PreTrainedTokenizerFast

    described = json.loads(base.backend_tokenizer.to_str())
    described.update(normalizer=PHI3_NORMALIZER, pre_tokenizer=None)
    for token in described["added_tokens"]:
        if token["content"] == "</s>":
            token.update(rstrip=True, special=False)
    backend = Tokenizer.from_str(json.dumps(described))
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    # Phi-3's chat tokens are added tokens after the 32000-piece Llama vocabulary
    backend.add_special_tokens([AddedToken(t, rstrip=t != "<|endoftext|>", special=True, normalized=False)
                                for t in spec.specials])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=spec.bos, eos_token=spec.eos,
                                   pad_token=spec.pad, unk_token=spec.unk, add_bos_token=False, add_eos_token=False,
                                   clean_up_tokenization_spaces=False)


@cache
def _cached_tokenizer_dir(name: str) -> Path:
    """Build each family's tokenizer once per process and keep it on disk; callers load fresh copies."""
    import atexit
    import tempfile

    spec = FAMILY_SPECS[name]
    out = Path(tempfile.mkdtemp(prefix=f"tw-tok-{name}-"))
    atexit.register(shutil.rmtree, out, True)
    if spec.tokenizer_kind == "bpe":
        tok = _build_bpe(name, spec)
    else:
        tok = _build_sentencepiece(name, spec, out)
    tok.chat_template = spec.chat_template
    tok.save_pretrained(out)
    return out


def build_family_tokenizer(name: str):
    """A fresh tokenizer of the family (safe to mutate): real special tokens, chat template, tokenizer kind."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_cached_tokenizer_dir(name))


def build_family_model(name: str, tokenizer, seed: int = 0):
    """A 2-layer random model built from the family's own transformers config class."""
    import torch
    import transformers

    spec = FAMILY_SPECS[name]
    torch.manual_seed(seed)
    config_class = getattr(transformers, spec.config_class)
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **spec.config_kwargs,
    )
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    eot = tokenizer.convert_tokens_to_ids(spec.end_of_turn)
    if eot != tokenizer.eos_token_id:  # as the real generation_config.json: stop at EOS or the end of a turn
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, eot]
    return model


def save_family(tmp_dir: Path, name: str, seed: int = 0) -> Path:
    """A saved Hugging Face folder (config, weights, tokenizer.json, and tokenizer.model for sentencepiece)."""
    tokenizer = build_family_tokenizer(name)
    model = build_family_model(name, tokenizer, seed=seed)
    out = Path(tmp_dir) / f"tiny-{name}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    sp_model = _cached_tokenizer_dir(name) / "tokenizer.model"
    if sp_model.exists():
        shutil.copyfile(sp_model, out / "tokenizer.model")
    return out
