"""The chat format: exact round trips, the loss mask on a hand-checked example, the Jinja form, bad conversations."""

from __future__ import annotations

import jinja2
import pytest

from llm_lab.core.chat import CHAT_TEMPLATE, ChatTemplate, add_chat_tokens, check_messages
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer

TEXT = "What is 12 + 30? It is 42. Spell cat backwards: tac. You are a helpful assistant.\n"
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": "It is 42."},
    {"role": "user", "content": "Spell cat backwards:"},
    {"role": "assistant", "content": "tac."},
]


@pytest.fixture(scope="module")
def bpe() -> SubwordTokenizer:
    return add_chat_tokens(SubwordTokenizer.train(TEXT * 4, vocab_size=300, show_progress=False))


@pytest.fixture(scope="module")
def char() -> CharTokenizer:
    return add_chat_tokens(CharTokenizer.from_text(TEXT))


def test_the_loss_mask_covers_exactly_the_assistant_tokens() -> None:
    """Hand-checked: characters a=0, b=1, c=2; chat tokens system=3, user=4, assistant=5, end=6.

    user "ab" -> [4, 0, 1, 6] all context; assistant "c" -> [5, 2, 6]: the role token is context, the content and
    its turn end are trained.
    """
    template = ChatTemplate(add_chat_tokens(CharTokenizer.from_text("abc")))
    rendered = template.render([{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c"}])
    assert rendered.ids == [4, 0, 1, 6, 5, 2, 6]
    assert rendered.mask == [0, 0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_render_and_parse_round_trip_exactly(kind: str, request: pytest.FixtureRequest) -> None:
    template = ChatTemplate(request.getfixturevalue(kind))
    rendered = template.render(CONVERSATION)
    assert template.parse(rendered.ids) == CONVERSATION
    assert template.render(template.parse(rendered.ids)).ids == rendered.ids
    # every assistant turn is trained (multi-turn), nothing else is
    trained = [i for i, m in zip(rendered.ids, rendered.mask, strict=True) if m]
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    expected = []
    for reply in replies:
        expected += [*template.tokenizer.encode(reply), template.end_id]
    assert trained == expected


def test_the_jinja_template_renders_the_same_ids(bpe: SubwordTokenizer) -> None:
    """CHAT_TEMPLATE (what tokenizer_config.json and Hugging Face read) gives our ids once its text is encoded."""
    template = ChatTemplate(bpe)
    env = jinja2.Environment()
    text = env.from_string(CHAT_TEMPLATE).render(messages=CONVERSATION, add_generation_prompt=False)
    assert bpe.encode(text, allowed_special="all") == template.render(CONVERSATION).ids
    prompt = env.from_string(CHAT_TEMPLATE).render(messages=CONVERSATION[:2], add_generation_prompt=True)
    assert bpe.encode(prompt, allowed_special="all") == template.prompt_ids(CONVERSATION[:2])


def test_typed_chat_tokens_cannot_end_a_turn(bpe: SubwordTokenizer) -> None:
    with pytest.raises(ValueError, match=r"message 1 content contains the chat token '<\|end\|>'"):
        ChatTemplate(bpe).render([{"role": "user", "content": "hi"}, {"role": "user", "content": "x<|end|>"}])


def test_reply_text_stops_at_the_turn_end(char: CharTokenizer) -> None:
    template = ChatTemplate(char)
    ids = [*char.encode("It is 42."), template.end_id, *char.encode("tac")]
    assert template.reply_text(ids) == "It is 42."


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], r"empty conversation"),
        ("hello", r"messages must be a list"),
        ([{"role": "robot", "content": "hi"}], r"message 0 has unknown role 'robot'; roles are \['system', 'user'"),
        ([{"role": "user", "content": 3}], r"message 0 content must be a string, got int"),
        ([{"role": "user", "content": "a", "name": "x"}], r"message 0 has unknown field\(s\) \['name'\]"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], r"message 1 is a system message"),
        (["hi"], r"message 0 must be an object"),
    ],
)
def test_bad_conversations_are_refused_by_name(messages: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_messages(messages)


def test_training_data_needs_an_assistant_turn() -> None:
    with pytest.raises(ValueError, match="no assistant message: there is nothing to train on"):
        check_messages([{"role": "user", "content": "hi"}], need_assistant=True)


def test_a_prompt_ends_with_a_user_message(char: CharTokenizer) -> None:
    with pytest.raises(ValueError, match="the last message is the assistant's already"):
        ChatTemplate(char).prompt_ids(CONVERSATION)


def test_parse_names_what_is_wrong(char: CharTokenizer) -> None:
    template = ChatTemplate(char)
    with pytest.raises(ValueError, match="position 0: expected a role token"):
        template.parse(char.encode("abc"))
    with pytest.raises(ValueError, match="position 0: the user turn has no turn-end token"):
        template.parse([template.role_ids["user"], *char.encode("hi")])


def test_a_tokenizer_without_chat_tokens_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no chat tokens \['<\|system\|>'"):
        ChatTemplate(CharTokenizer.from_text("abc"))
