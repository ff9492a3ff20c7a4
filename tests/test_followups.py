"""Follow-up classification: thanks and confirmations never reopen, new complaints escalate."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import cue, make_result
from triage.followups import classify_followup, load_followup_lexicon

LEXICON = load_followup_lexicon()

CALM: dict[str, Any] = {
    "is_complaint": False,
    "complaint_score": 0.1,
    "sentiment": "positive",
    "sentiment_score": 0.7,
}
NEUTRAL: dict[str, Any] = {
    "is_complaint": False,
    "complaint_score": 0.2,
    "sentiment": "neutral",
    "sentiment_score": 0.0,
}
ANGRY: dict[str, Any] = {
    "is_complaint": True,
    "complaint_score": 0.9,
    "sentiment": "negative",
    "sentiment_score": -0.8,
}

CASES = [
    # (text, model result, kind, words in the reasons)
    ("谢谢你们", CALM, "thanks", "thanks: '谢谢'"),
    ("好的,辛苦了", NEUTRAL, "thanks", "'辛苦了'"),
    ("问题已经解决了,谢谢", CALM, "resolved", "confirms resolution"),
    ("退款已到账", NEUTRAL, "resolved", "'已到账'"),
    ("解决了吗?怎么还没消息", NEUTRAL, "update", "more about the same problem"),
    ("谢谢,但是问题还没解决", NEUTRAL, "update", "persists: '没解决'"),
    ("并未恢复正常", NEUTRAL, "update", "persists: '恢复正常'"),
    ("我还没收到退款", NEUTRAL, "update", "persists: '没收到'"),
    ("还是没收到,你们怎么回事", ANGRY, "update", "persists: '没收到'"),
    ("订单号是123456,麻烦再查一下", NEUTRAL, "update", "more about the same problem"),
    ("谢谢你们的敷衍,太差劲了", ANGRY, "new_complaint", "complaint (0.90) with negative"),
    ("解决了,但是态度太差我要投诉", ANGRY, "new_complaint", "complaint"),
    ("谢谢", ANGRY | {"is_complaint": False}, "update", "sentiment negative"),
]


@pytest.mark.parametrize(("text", "model", "kind", "reason"), CASES, ids=[c[0] for c in CASES])
def test_followup_kind_and_reason(text, model, kind, reason):
    decision = classify_followup(make_result(text=text, **model), LEXICON, "P1")
    assert decision.kind == kind
    assert reason in " | ".join(decision.reasons)


def test_severe_cue_makes_a_thank_you_a_new_complaint():
    result = make_result(text="谢谢,不过我已经找律师了", cues=("legal",), **CALM)
    decision = classify_followup(result, LEXICON, "P1")
    assert decision.kind == "new_complaint"
    assert decision.reasons == ("P1 cue: legal 'x'",)


def test_a_severe_cue_whose_gate_stayed_closed_does_not_reopen():
    result = make_result(text="谢谢,以后有问题我再问12315怎么投诉", **CALM)
    result.cues = [cue("regulator", "12315", applied=False)]
    assert classify_followup(result, LEXICON, "P1").kind == "thanks"


def test_lower_urgency_cue_does_not_turn_thanks_into_a_complaint():
    result = make_result(text="谢谢,第二次联系终于好了", cues=("repeat_contact",), **CALM)
    assert classify_followup(result, LEXICON, "P1").kind == "thanks"
