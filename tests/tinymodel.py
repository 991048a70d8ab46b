"""A tiny random-weight llama model with a real byte-level BPE tokenizer and a ChatML template.

Built in seconds, it exercises every code path of the real serving stack (template, batching,
streaming detokenization of multi-byte characters, stop strings) without the cost of a real
model. Its text is gibberish by design; real-output checks use SmolLM2.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# The tool-calling variant: a Qwen2.5/Hermes-style ChatML template that renders ``tools`` and
# assistant ``tool_calls`` and turns ``tool`` results into <tool_response> blocks. It names
# <tool_call> and tool_call.name, so mlx-lm picks its json_tools parser for it.
CHATML_TOOLS = (
    "{%- if tools %}{{ '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{%- endfor %}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- elif messages[0].role == 'system' %}{{ '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}"
    "{{ '<|im_start|>assistant' }}{%- if message.content %}{{ '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{ \'\\n<tool_call>\\n{\\"name\\": \\"\' + tool_call.name + \'\\", \\"arguments\\": \' }}'
    "{{ tool_call.arguments | tojson }}{{ '}\\n</tool_call>' }}"
    "{%- endfor %}{{ '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
TOOL_SPECIALS = ["<tool_call>", "</tool_call>"]

# The reasoning variant: CHATML_TOOLS plus Qwen3-style thinking. The generation prompt opens
# ``<think>`` (as DeepSeek-R1's does), or renders an empty ``<think></think>`` when
# ``enable_thinking`` is false; an assistant turn's ``reasoning_content`` re-renders between the
# markers, exactly where the model wrote it, so a conversation's next turn reuses the KV cache.
_THINK_TURN = (
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if message.reasoning_content is defined and message.reasoning_content is not none %}"
    "{{ '<think>' + message.reasoning_content + '</think>' }}{%- endif %}"
    "{{ message.content }}"
)
CHATML_THINK = (
    CHATML_TOOLS.replace(
        "{%- elif message.role == 'tool' %}",
        "{%- elif message.role == 'assistant' %}" + _THINK_TURN + "{{ '<|im_end|>\\n' }}"
        "{%- elif message.role == 'tool' %}",
    )
    .replace(
        "{{ '<|im_start|>assistant' }}{%- if message.content %}",
        "{{ '<|im_start|>assistant' }}"
        "{%- if message.reasoning_content is defined and message.reasoning_content is not none %}"
        "{{ '\\n<think>' + message.reasoning_content + '</think>' }}{%- endif %}"
        "{%- if message.content %}",
    )
    .replace(
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}",
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{%- if enable_thinking is defined and not enable_thinking %}{{ '<think></think>' }}"
        "{%- else %}{{ '<think>' }}{%- endif %}{%- endif %}",
    )
)
THINK_SPECIALS = ["<think>", "</think>"]
THOUGHT = "Hm."  # an added token: forced by logit_bias, the output is this word, over and over
CALL_TEXT = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'  # an added token: a whole call
EMPTY_ARGS = "{}}"  # an added token: forced by logit_bias after a named-call prefill, it completes the call
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Grüße aus Köln — naïve café, façade, jalapeño, smörgåsbord, Ærø.",
    "東京は日本の首都です。北京は中国の首都です。서울은 한국의 수도입니다.",
    "Emoji: 🚀🔥✨🎉 and math: ∑ ∫ √ ≈ ≠ ∞.",
    "def hello(name):\n    return f'Hello, {name}!'\n",
] * 20


def english_corpus() -> list[str]:
    """Prose and JSON for a tokenizer that packs an agent's prompt (instructions, JSON Schema
    tools) into few tokens: the standard library's docstrings and some schemas. Long prompts
    then cost a test seconds, not minutes, of prefill."""
    import warnings

    with warnings.catch_warnings():  # getmembers touches deprecated attributes (typing.io, ...)
        warnings.simplefilter("ignore")
        texts = _docstrings()
    schema = {"type": "object", "properties": {"file_path": {"type": "string", "description": "The path"}}}
    texts += [json.dumps({"name": "Read", "description": "Reads a file", "input_schema": schema})] * 50
    return [t for t in texts if t]


def _docstrings() -> list[str]:
    import importlib
    import inspect

    texts: list[str] = []
    for name in ("argparse", "asyncio", "collections", "dataclasses", "email", "http.client", "inspect",
                 "json", "logging", "os", "pathlib", "re", "subprocess", "typing", "unittest", "zipfile"):  # fmt: skip
        mod = importlib.import_module(name)
        texts += [inspect.getdoc(o) or "" for _, o in inspect.getmembers(mod) if inspect.isclass(o) or callable(o)]
    return texts


def build_tiny_model(
    out: Path, seed: int = 0, context: int = 16384, tools: bool = False, vocab: int = 600, think: bool = False
) -> Path:
    """The model in ``out``; ``tools``: the tool-calling variant (CHATML_TOOLS, <tool_call> tokens);
    ``think``: the reasoning variant (CHATML_THINK, tools too, <think>/</think> tokens, THOUGHT and
    CALL_TEXT as added tokens); ``vocab`` above 600: a tokenizer trained on English and JSON too
    (``english_corpus``)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS + (english_corpus() if vocab > 600 else []), trainer)
    if tools or think:
        tok.add_special_tokens(TOOL_SPECIALS)
        tok.add_tokens([EMPTY_ARGS])
    if think:
        tok.add_special_tokens(THINK_SPECIALS)
        tok.add_tokens([THOUGHT, CALL_TEXT])
    tok.save(str(out / "tokenizer.json"))
    eos = tok.token_to_id("<|im_end|>")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "chat_template": CHATML_THINK if think else CHATML_TOOLS if tools else CHATML,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "bos_token": None,
                "add_bos_token": False,
                "model_max_length": context,
            }
        )
    )
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": tok.get_vocab_size(),
        "rope_theta": 10000.0,
        "max_position_embeddings": context,
        "tie_word_embeddings": True,
        "eos_token_id": eos,
    }
    (out / "config.json").write_text(json.dumps(config))
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.save_safetensors(
        str(out / "model.safetensors"), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"}
    )
    return out


if __name__ == "__main__":
    import sys

    print(build_tiny_model(Path(sys.argv[1])))
