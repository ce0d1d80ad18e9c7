"""The tokenizer: OpenAI's encodings, built from the files shipped in engine/encodings/.

The expected ids below were taken from ``bpe-openai`` 0.1.4 (the tokenizer used before), so a
pass means the switch to tiktoken changed no token id. Each entry is (token count, first 16 hex
digits of the SHA-256 of ``repr(ids)``).
"""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources

import pytest

from omixa.engine import tokens

TEXTS = {
    "ascii": "Hello, world! How are you doing today?",
    "contractions": "I'm sure they'LL say it's THEIR dog's ball, we've ALL'VE seen it",
    "digits": "3.14159265358979 1234567890123 0x7fffffff 1,000,000 2026-11-25T23:28:25Z",
    "whitespace": "a  b   c    d\t\te\n\nf\r\n\r\ng \u00a0 h\u3000i" + " " * 37 + "\n" * 5 + "end   ",
    "code": 'def f(x: int) -> int:\n    """Doc."""\n    if x <= 0:\n        return {"k": [1, 2, 3]}\n    return f(x - 1) ** 2  # comment\n',
    "json": '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}',
    "cjk": "日本語のテキストと中文文本，以及한국어 텍스트。",
    "scripts": "Ελληνικά Русский текст עברית العربية हिन्दी ไทย",
    "emoji": "🎉👩‍👩‍👧‍👦🇫🇷 ✔️ e\u0301 \ufe0f",
    "special_text": "<|endoftext|> <|endofprompt|> <|fim_prefix|>",
    "long": (
        "The quarterly revenue grew by 12% to $4.2 billion, driven by cloud services. "
        "Héllo wörld 日本語 🎉\n\n    indented    code();\n"
    )
    * 300,
}

EXPECTED = {
    "o200k_base": {
        "ascii": (10, "7dd9b57e6b3b6275"),
        "contractions": (17, "599203e6103ce541"),
        "digits": (39, "dec86a45ce04aa22"),
        "whitespace": (21, "dfd3ccfbec55c6d6"),
        "code": (49, "3819a78dccd5438e"),
        "json": (25, "cdfc2443ae734df6"),
        "cjk": (16, "bf394b440d231dc6"),
        "scripts": (11, "98127c5329d01fdf"),
        "emoji": (23, "f2dd6253038eb0f1"),
        "special_text": (20, "a1824d197b50646c"),
        "long": (10800, "a000e895344d9d95"),
    },
    "cl100k_base": {
        "ascii": (10, "72af0e03ecb0c359"),
        "contractions": (21, "6d4358996023c8f0"),
        "digits": (38, "c27bc5712b9f1244"),
        "whitespace": (21, "344cde05c76c65eb"),
        "code": (49, "68b400f3e1d06b4b"),
        "json": (24, "dfd18a0c6f0550d6"),
        "cjk": (24, "2305b2a0b00a8924"),
        "scripts": (35, "85f27f6a85e9d155"),
        "emoji": (33, "0000995d2d75b92c"),
        "special_text": (19, "42abd1eef03bf833"),
        "long": (12000, "eab7ba415f21e855"),
    },
}


@pytest.mark.parametrize("name", tokens.ENCODING_NAMES)
def test_ids_match_the_previous_tokenizer(name: str) -> None:
    enc = tokens.encoding(name)
    for key, text in TEXTS.items():
        ids = enc.encode_ordinary(text)
        assert (len(ids), hashlib.sha256(repr(ids).encode()).hexdigest()[:16]) == EXPECTED[name][key], key
        assert tokens.count_text(text, name) == len(ids)
        assert enc.decode(ids) == text


@pytest.mark.parametrize("name", tokens.ENCODING_NAMES)
def test_encoding_is_tiktokens_own(name: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken's own constructor (tiktoken_ext.openai_public), fed our file through its cache
    (looked up under the SHA-1 of OpenAI's URL, checked against its expected SHA-256), gives
    the same split pattern, special tokens and ranks as ours."""
    from tiktoken_ext import openai_public  # type: ignore[import-untyped]  # tiktoken_ext ships no types

    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    packed = (resources.files("omixa.engine") / "encodings" / f"{name}.tiktoken.gz").read_bytes()
    (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(gzip.decompress(packed))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    theirs = getattr(openai_public, name)()
    spec = tokens._SPECS[name]
    assert (spec.pat_str, spec.special_tokens) == (theirs["pat_str"], theirs["special_tokens"])
    assert tokens.load_ranks(name) == theirs["mergeable_ranks"]
    assert tokens.encoding(name).max_token_value == max(theirs["special_tokens"].values())


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        tokens.encoding("p50k_base")
