"""Prompt templates: the paper's R1-Zero text, chat turns, `<think>` prefill, placeholder errors."""
import dataclasses

import pytest

from r1jax.data import R1_CHAT, R1_ZERO, ChatTemplate, PromptTemplate

PAPER_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: QUESTION. Assistant:"
)


def test_r1_zero_is_the_paper_template_verbatim():
    assert R1_ZERO.render("What is 2 + 2") == PAPER_TEMPLATE.replace("QUESTION", "What is 2 + 2")
    assert not R1_ZERO.think_prefill


def test_questions_with_braces_and_placeholders_are_kept_verbatim():
    question = r"Simplify \frac{1}{2} + {x} and {prompt} and {0}"
    for template in (R1_ZERO, R1_CHAT):
        rendered = template.render(question)
        assert question in rendered and rendered.count("{prompt}") == 1
    literal = PromptTemplate(name="latex", text=r"Put the answer in \boxed{} or {answer}: {prompt}")
    assert literal.render("1+1") == r"Put the answer in \boxed{} or {answer}: 1+1"


def test_think_prefill_ends_the_prompt_with_the_open_tag():
    assert dataclasses.replace(R1_ZERO, think_prefill=True).render("q").endswith("q. Assistant: <think>")
    assert dataclasses.replace(R1_CHAT, think_prefill=True).render("q").endswith("\nAssistant: <think>")
    assert "<think>" not in R1_CHAT.render("q").rsplit("Assistant:", 1)[1]


def test_chat_template_orders_turns_and_takes_custom_headers():
    rendered = R1_CHAT.render("Solve x")
    system_at, user_at, assistant_at = (rendered.index(h) for h in ("System: ", "User: Solve x\n", "Assistant: "))
    assert system_at == 0 < user_at < assistant_at and rendered.endswith("Assistant: ")
    tokens = ChatTemplate(name="tok", system="", user="Q: {prompt}", user_header="<|user|>",
                          assistant_header="<|assistant|>", turn_end="<|end|>", think_prefill=True)
    assert tokens.render("1+1?") == "<|user|>Q: 1+1?<|end|><|assistant|><think>"


def test_templates_without_their_placeholder_are_errors():
    with pytest.raises(ValueError, match=r"\{prompt\}"):
        PromptTemplate(name="bad", text="User: {question}. Assistant:")
    with pytest.raises(ValueError, match="user"):
        ChatTemplate(name="bad", system="s", user="no placeholder")
    with pytest.raises(ValueError, match="system"):
        ChatTemplate(name="bad", system="s {prompt}")
    with pytest.raises(TypeError, match="str"):
        R1_ZERO.render(None)
