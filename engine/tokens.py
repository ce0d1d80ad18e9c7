"""Offline token counting with the model's real tokenizer.

We use ``bpe-openai`` (MIT; GitHub's Rust ``bpe`` crate behind a tiktoken-compatible API) because
it ships the ``o200k_base`` and ``cl100k_base`` encodings inside the wheel: no download on first
use, so it works on air-gapped machines, where ``tiktoken`` fails fetching its files. It gives
the same ids as tiktoken. Importing bpe-openai costs about a second (it loads its encodings), so
it is imported on first use; the engine calls :func:`warm_up` at start-up so no request pays.

Chat prompts are counted the way OpenAI documents for its chat models: 3 tokens per message,
the tokens of every string field, 1 more for a ``name``, and 3 to prime the reply. Tools and
response formats are counted as their JSON text. An image part counts as the model's
worst case for one image (the catalog's ``image_tokens``), so a hold always covers it.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import bpe_openai

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# Default worst case of one image part when the catalog gives none: gpt-4o's largest
# high-detail image (768x2048 after scaling: 85 + 170 per 512px tile x 8 tiles).
IMAGE_PART_TOKENS = 1_445
AUDIO_PART_TOKENS = 4_096


@functools.cache
def encoding(name: str) -> "bpe_openai.Encoding":
    """The named encoding (``o200k_base``, ``cl100k_base``), loaded once."""
    import bpe_openai

    return bpe_openai.get_encoding(name)


def warm_up(names: Iterable[str]) -> None:
    """Load these encodings now (blocking, about a second the first time)."""
    for name in set(names):
        encoding(name)


def count_text(text: str, encoding_name: str = "o200k_base") -> int:
    """Tokens in ``text``; special-token text counts as ordinary text, as upstreams do."""
    if not text:
        return 0
    return len(encoding(encoding_name).encode_ordinary(text))


def _count_content(content: Any, enc: str, image_tokens: int) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content, enc)
    total = 0
    for part in content if isinstance(content, list) else [content]:
        if not isinstance(part, dict):
            total += count_text(json.dumps(part), enc)
            continue
        kind = part.get("type")
        if kind == "text":
            total += count_text(str(part.get("text") or ""), enc)
        elif kind in ("image_url", "input_image", "image"):
            total += image_tokens
        elif kind in ("input_audio", "audio"):
            total += AUDIO_PART_TOKENS
        else:
            total += count_text(json.dumps(part, separators=(",", ":")), enc)
    return total


def count_chat_prompt(
    body: dict[str, Any], encoding_name: str = "o200k_base", *, image_tokens: int = IMAGE_PART_TOKENS
) -> int:
    """Prompt tokens of a chat-completions body (messages, tools, response format), with
    each image part counted as ``image_tokens``."""
    total = REPLY_PRIMING_TOKENS
    for message in body.get("messages") or ():
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += _count_content(value, encoding_name, image_tokens)
            elif key == "name":
                total += TOKENS_PER_NAME + count_text(str(value), encoding_name)
            elif isinstance(value, str):
                total += count_text(value, encoding_name)
            elif value is not None:
                total += count_text(json.dumps(value, separators=(",", ":")), encoding_name)
    for key in ("tools", "functions", "response_format", "tool_choice"):
        value = body.get(key)
        if value:
            total += count_text(json.dumps(value, separators=(",", ":")), encoding_name)
    return total
