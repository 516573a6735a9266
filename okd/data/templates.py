"""Prompt templates: the Alpaca/MiniLLM "### Instruction" template, the tokenizer's chat template, plain.

A template turns an Example into the prompt text only; the response is tokenized separately so that
its tokens alone are scored.
"""

from __future__ import annotations

from okd.errors import OkdError

TEMPLATES = ("alpaca", "chat", "plain")

# Exactly the strings used by Alpaca and MiniLLM (their evaluation depends on them).
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
    "### Input:\n{input}\n\n### Response:\n"
)


def check_template(template: str, tokenizer=None) -> None:
    """Raise OkdError if the template is unknown, or is `chat` and the tokenizer has no chat template."""
    if template not in TEMPLATES:
        raise OkdError(f"unknown data.template '{template}'; valid templates: {', '.join(TEMPLATES)}")
    if template == "chat":
        if tokenizer is None:
            raise OkdError("data.template 'chat' needs a tokenizer with a chat template")
        if not getattr(tokenizer, "chat_template", None):
            raise OkdError("data.template is 'chat' but the tokenizer has no chat template; "
                           "use data.template: alpaca (or plain)")


def _context(example) -> str:
    """The text for the template's input slot: the record's input, or earlier chat turns as lines."""
    parts = []
    if example.messages:
        # every prompt turn except the last user message, which is the instruction itself
        last_user = max((i for i, m in enumerate(example.messages) if m["role"] == "user"), default=-1)
        history = [f"{m['role']}: {m['content']}" for i, m in enumerate(example.messages) if i != last_user]
        if history:
            parts.append("\n".join(history))
    if example.input:
        parts.append(example.input)
    return "\n\n".join(parts)


def chat_messages(example) -> list[dict]:
    """The conversation handed to the chat template."""
    if example.messages:
        return [dict(m) for m in example.messages]
    content = example.instruction + (f"\n\n{example.input}" if example.input else "")
    return [{"role": "user", "content": content}]


def format_prompt(example, template: str, tokenizer=None) -> str:
    """The prompt text of `example` under `template` (one of TEMPLATES)."""
    check_template(template, tokenizer)
    if template == "alpaca":
        context = _context(example)
        if context:
            return ALPACA_PROMPT_WITH_INPUT.format(instruction=example.instruction, input=context)
        return ALPACA_PROMPT.format(instruction=example.instruction)
    if template == "plain":
        context = _context(example)
        return example.instruction + (f"\n\n{context}" if context else "")
    try:
        text = tokenizer.apply_chat_template(chat_messages(example), add_generation_prompt=True,
                                             tokenize=False)
    except Exception as e:  # noqa: BLE001 - jinja errors from the model's template (e.g. role order)
        where = f"{example.source}: " if example.source else ""
        raise OkdError(f"{where}the tokenizer's chat template rejected this conversation "
                       f"({type(e).__name__}: {e})") from None
    if not isinstance(text, str):  # some versions return a list for batched input
        text = text[0]
    return text
