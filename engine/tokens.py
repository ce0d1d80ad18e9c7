"""Offline token counting with the model's real tokenizer.

We use ``tiktoken`` (MIT), OpenAI's own tokenizer, so the ids are OpenAI's by definition. It
downloads its encoding files from OpenAI on first use, which fails on machines that reach only
the package registries, so we ship the two files we need in ``engine/encodings/``
(``o200k_base``, ``cl100k_base``, gzipped; ``engine/encodings/vendor.py`` reproduces them) and
build the encodings from them: each file is checked against the SHA-256 that tiktoken itself
checks, so it is byte for byte OpenAI's published file. The split patterns and special tokens
below are tiktoken's (``tiktoken_ext/openai_public.py``; a test compares them).

Why not ``bpe-openai`` (used before): with ``o200k_base`` loaded it took about 133 MB of the
process's memory, against about 48 MB here (tiktoken's import included). tiktoken is a little
slower on long texts (see docs/operations.md, "Token counting").

Loading an encoding takes a good part of a second (o200k_base 0.5–0.8 s, cl100k_base 0.2–0.3 s
on a 2-core machine), so the engine calls :func:`warm_up` at start-up and no request pays.

Chat prompts are counted the way OpenAI documents for its chat models: 3 tokens per message,
the tokens of every string field, 1 more for a ``name``, and 3 to prime the reply. Tools and
response formats are counted as their JSON text. An image part counts as the model's
worst case for one image (the catalog's ``image_tokens``), so a hold always covers it.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
from collections.abc import Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import tiktoken

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# Default worst case of one image part when the catalog gives none: gpt-4o's largest
# high-detail image (768x2048 after scaling: 85 + 170 per 512px tile x 8 tiles).
IMAGE_PART_TOKENS = 1_445
AUDIO_PART_TOKENS = 4_096

ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
ENDOFPROMPT = "<|endofprompt|>"


@attrs.frozen
class _Spec:
    sha256: str  # of the uncompressed .tiktoken file: tiktoken's expected_hash
    pat_str: str
    special_tokens: dict[str, int]


# Copied from tiktoken 0.14.0's tiktoken_ext/openai_public.py (tests/test_tokens.py checks).
_SPECS = {
    "o200k_base": _Spec(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={ENDOFTEXT: 199999, ENDOFPROMPT: 200018},
    ),
    "cl100k_base": _Spec(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        special_tokens={
            ENDOFTEXT: 100257,
            FIM_PREFIX: 100258,
            FIM_MIDDLE: 100259,
            FIM_SUFFIX: 100260,
            ENDOFPROMPT: 100276,
        },
    ),
}
ENCODING_NAMES = tuple(_SPECS)


def load_ranks(name: str) -> dict[bytes, int]:
    """The shipped ``.tiktoken`` file of ``name`` (token bytes to id), checked against
    tiktoken's SHA-256. Errors: ValueError for an unknown name or a file that does not match."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown encoding {name!r}; known: {', '.join(_SPECS)}")
    data = gzip.decompress((resources.files("omixa.engine") / "encodings" / f"{name}.tiktoken.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise ValueError(f"engine/encodings/{name}.tiktoken.gz is not OpenAI's file (SHA-256 mismatch)")
    # The format tiktoken's own load_tiktoken_bpe reads: "base64(token) id" per line.
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}


@functools.cache
def encoding(name: str) -> tiktoken.Encoding:
    """The named encoding (``o200k_base``, ``cl100k_base``), loaded once."""
    import tiktoken

    ranks = load_ranks(name)
    spec = _SPECS[name]
    enc = tiktoken.Encoding(name, pat_str=spec.pat_str, mergeable_ranks=ranks, special_tokens=dict(spec.special_tokens))
    del ranks
    # The Python dict of ranks (about 30 MB for o200k_base) is kept by tiktoken only to pickle
    # the encoding; its Rust core has its own copy. We never pickle it, so let it go.
    enc._mergeable_ranks = {}
    return enc


def warm_up(names: Iterable[str]) -> None:
    """Load these encodings now (blocking, 0.2–0.8 s each the first time)."""
    for name in set(names):
        encoding(name)


# Past this many characters, text is counted through tiktoken's token buffer rather than a
# list of ints: the buffer is built without the GIL (a 3.8 MB text: 61 ms with the loop
# thread running freely, against 98 ms holding it for about 20 ms to build the list).
_BUFFER_FROM_CHARS = 4096
_NO_SPECIAL: frozenset[str] = frozenset()


def count_text(text: str, encoding_name: str = "o200k_base") -> int:
    """Tokens in ``text``; special-token text counts as ordinary text, as upstreams do.

    Long texts are counted without holding the GIL, so a worker thread counting them leaves
    the event loop's thread free (:mod:`engine.intake`).
    """
    if not text:
        return 0
    enc = encoding(encoding_name)
    if len(text) < _BUFFER_FROM_CHARS:
        return len(enc.encode_ordinary(text))
    # tiktoken's own encode_to_numpy, without numpy: a buffer of uint32 token ids. With no
    # special token allowed, special-token text is encoded as ordinary text, exactly as
    # encode_ordinary does (tests/test_tokens.py checks both agree).
    return memoryview(enc._core_bpe.encode_to_tiktoken_buffer(text, _NO_SPECIAL)).nbytes // 4


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
        if kind in ("text", "input_text", "output_text"):  # chat's, and the Responses API's
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
