from __future__ import annotations

import pytest

from certaindex.engines.chat_template import BUILTIN_TEMPLATES, ChatTemplate, ChatTemplateError, guess_template_name

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


def test_chatml_renders_the_assistant_turn_open() -> None:
    text = ChatTemplate.named("chatml").render(MESSAGES)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_deepseek_r1_opens_a_think_block_after_bos() -> None:
    text = ChatTemplate.named("deepseek-r1", bos_token="<BOS>").render(MESSAGES)
    assert text.startswith("<BOS>Be brief.<｜User｜>Hi?")
    assert text.endswith("<｜Assistant｜><think>\n")


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_every_builtin_renders_the_user_text(name: str) -> None:
    assert "Hi?" in ChatTemplate.named(name).render(MESSAGES)


def test_template_exceptions_become_clear_errors() -> None:
    template = ChatTemplate(source="{{ raise_exception('only user turns') }}")
    with pytest.raises(ChatTemplateError, match="only user turns"):
        template.render(MESSAGES)


def test_unknown_template_and_empty_messages_are_refused() -> None:
    with pytest.raises(ChatTemplateError, match="unknown chat template"):
        ChatTemplate.named("nope")
    with pytest.raises(ChatTemplateError, match="no messages"):
        ChatTemplate.named("chatml").render([])


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "deepseek-r1"),
        ("Qwen/QwQ-32B", "qwen3-thinking"),
        ("Qwen/Qwen3-8B", "qwen3-thinking"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama3"),
        ("google/gemma-3-270m", "gemma"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "chatml"),
    ],
)
def test_template_guess_from_model_name(model: str, expected: str) -> None:
    assert guess_template_name(model) == expected
