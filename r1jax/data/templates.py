"""Prompt templates as data: the R1-Zero template (paper, Table 1) and a chat-style template.

Questions are substituted with `str.replace`, never `str.format`, so braces in
questions (LaTeX: `\\frac{1}{2}`) are kept verbatim.
"""
from __future__ import annotations

import dataclasses

PLACEHOLDER = "{prompt}"
THINK_OPEN = "<think>"

R1_ZERO_TEXT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant:"
)
R1_SYSTEM_TEXT = (
    "You are a helpful assistant. You first think about the reasoning process in the mind and then provide "
    "the user with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)


def _check_placeholder(owner: str, field: str, text: str) -> None:
    if not isinstance(text, str) or PLACEHOLDER not in text:
        raise ValueError(f"{owner}.{field} must contain the placeholder {PLACEHOLDER!r}: {text!r}")


def _check_question(question: str) -> None:
    if not isinstance(question, str):
        raise TypeError(f"question must be str, got {type(question).__name__}")


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A single-string template with a `{prompt}` placeholder; optionally prefills `<think>`."""

    name: str
    text: str
    think_prefill: bool = False

    def __post_init__(self):
        _check_placeholder("PromptTemplate", "text", self.text)

    def render(self, question: str) -> str:
        """The prompt for `question`, ending with `<think>` when `think_prefill` is set."""
        _check_question(question)
        prompt = self.text.replace(PLACEHOLDER, question)
        if self.think_prefill:
            prompt += THINK_OPEN if prompt[-1:].isspace() else " " + THINK_OPEN
        return prompt


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """System, user and assistant turns with role headers (plain text, or a model's special tokens)."""

    name: str
    system: str
    user: str = PLACEHOLDER
    system_header: str = "System: "
    user_header: str = "User: "
    assistant_header: str = "Assistant: "
    turn_end: str = "\n"
    think_prefill: bool = False

    def __post_init__(self):
        _check_placeholder("ChatTemplate", "user", self.user)
        if PLACEHOLDER in self.system:
            raise ValueError(f"ChatTemplate.system must not contain {PLACEHOLDER!r}; put it in `user`")

    def render(self, question: str) -> str:
        """System turn (if any), user turn, then the assistant header (plus `<think>` when prefilled)."""
        _check_question(question)
        system = f"{self.system_header}{self.system}{self.turn_end}" if self.system else ""
        user = f"{self.user_header}{self.user.replace(PLACEHOLDER, question)}{self.turn_end}"
        prefill = THINK_OPEN if self.think_prefill else ""
        return f"{system}{user}{self.assistant_header}{prefill}"


R1_ZERO = PromptTemplate(name="r1-zero", text=R1_ZERO_TEXT)
R1_CHAT = ChatTemplate(name="r1-chat", system=R1_SYSTEM_TEXT)
