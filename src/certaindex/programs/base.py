"""What every program shares: turning a question (or a whole conversation) into an engine's prompt."""

from __future__ import annotations

from typing import Sequence

from certaindex.core.prompting import build_prompt_messages, validate_question
from certaindex.engines.base import Engine


async def open_prompt(
    engine: Engine,
    question: str,
    system_prompt: str | None,
    messages: Sequence[dict[str, str]] | None = None,
) -> tuple[str, str]:
    """Validate the question and render it for ``engine`` (after letting it resolve its chat
    template): the one way every program turns a question into its prompt. ``messages``: a whole
    conversation to render instead (a proxied chat request); ``question`` then only labels it."""
    question = validate_question(question)
    await engine.prepare()
    if messages is not None:
        return question, engine.render_chat(messages)
    return question, engine.render_chat(build_prompt_messages(question, system_prompt))
