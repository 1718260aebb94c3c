"""Token count -> character offset in a recorded chain of thought.

Why: probes and trials of recorded traces are placed by reasoning-token count, but the text
markers of the certainty score (``\\boxed{}``, ``</think>``, "Wait") are found in ``full_text``. With
the model's own vocabulary (``quicktok-v1``, the optional ``tokenizer`` extra: ``qwen3`` for
R1-Distill-Qwen and Qwen3, ``llama3`` for R1-Distill-Llama) encoding ``full_text`` reproduces
``tokens_used`` (or one less: the end-of-sequence token is not in the text) on 99.6-100% of the
Governor trajectories. Without quicktok, or for another vocabulary, a measured ratio is used: the
trajectory's own characters per token (``len(text) / tokens_used``), spread evenly.

A live program needs none of this: it counts the tokens it streams.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["char_ends", "encode", "encoding_for_model", "quicktok_available"]


def encoding_for_model(model: str) -> str | None:
    """The quicktok vocabulary of a model family; None when unknown."""
    m = model.lower()
    if "llama" in m:
        return "llama3"
    if "qwen" in m:
        return "qwen3"
    return None


@lru_cache(maxsize=4)
def _encoding(name: str) -> Any:
    import quicktok

    return quicktok.get_encoding(name)


@lru_cache(maxsize=4)
def _token_byte_lengths(name: str) -> np.ndarray:
    enc = _encoding(name)
    lens = np.zeros(max(enc.n_vocab, enc.max_token_value + 1), dtype=np.int64)
    for i in range(len(lens)):
        try:
            lens[i] = len(enc.decode_single_token_bytes(i))
        except Exception:  # noqa: BLE001 - holes in the id space
            lens[i] = 0
    return lens


def quicktok_available(name: str = "qwen3") -> bool:
    try:
        _encoding(name)
    except Exception:  # noqa: BLE001 - not installed or vocabulary unreadable
        return False
    return True


def _quicktok_ends(text: str, name: str) -> np.ndarray:
    ids = np.asarray(_encoding(name).encode(text, allowed_special="all"), dtype=np.int64)
    byte_ends = np.cumsum(_token_byte_lengths(name)[ids])
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    starts = (raw & 0xC0) != 0x80  # bytes that start a character
    chars_before = np.concatenate([[0], np.cumsum(starts)])
    b = np.minimum(byte_ends, len(raw))
    complete = (b >= len(raw)) | np.append(starts, True)[b]
    return chars_before[b] - (~complete).astype(np.int64)  # a token ending mid-character: the char before


def char_ends(text: str, model: str, tokens_used: int) -> tuple[np.ndarray, str]:
    """(character offset just after each token, how it was measured) for one recorded text."""
    name = encoding_for_model(model)
    if name is not None and quicktok_available(name):
        return _quicktok_ends(text, name), f"quicktok {name}"
    n = max(int(tokens_used), 1)
    ratio = len(text) / n
    return np.round(np.arange(1, n + 1) * ratio).astype(np.int64), f"{ratio:.2f} characters a token"


def encode(text: str, model: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(token ids, character offset just after each token) of ``text`` in ``model``'s own
    vocabulary (special tokens such as ``<think>`` as themselves); None without quicktok or for a
    model family it has no vocabulary for. The replay server streams a recorded text by these."""
    name = encoding_for_model(model)
    if name is None or not quicktok_available(name):
        return None
    ids = np.asarray(_encoding(name).encode(text, allowed_special="all"), dtype=np.int64)
    return ids, _quicktok_ends(text, name)
