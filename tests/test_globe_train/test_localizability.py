"""R_loc: the endpoint judge against a server that returns logprobs, the in-process judge on the tiny model,
and the failure policy (never a silent 0)."""

from __future__ import annotations

import hashlib
import io
import math

import pytest
from PIL import Image
from teacher_server import TeacherServer

from globe_train.configs import GRPOScriptArguments
from globe_train.localizability import (
    EndpointJudge,
    JudgeError,
    LocalizabilityReward,
    LocalJudge,
    judge_messages,
    yes_share,
)
from globe_train.rewards import get_reward_funcs

pytest.importorskip("openai")
SECRET = "sk-rm-THIS-MUST-NOT-LEAK-1234"
TOP = [
    ("yes", math.log(0.6)),
    (" Yes", math.log(0.1)),
    ("no", math.log(0.2)),
    ("maybe", math.log(0.05)),
    ("perhaps", math.log(0.01)),
]


def _image(color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (64, 48), color)


def _digest(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=90)
    return hashlib.sha256(buf.getvalue()).hexdigest()


ANSWER = "<answer>country: France\ncity: Paris</answer>"
COMPLETIONS = [[{"role": "assistant", "content": f"<think>sign {i}</think>{ANSWER}"}] for i in range(4)]


def test_yes_share_reads_both_answers_and_refuses_no_mass():
    assert yes_share(0.3, 0.1) == pytest.approx(0.75)
    with pytest.raises(JudgeError):
        yes_share(0.0, 0.0)


def test_endpoint_judge_sums_the_spellings_of_yes_and_no(monkeypatch):
    monkeypatch.setenv("RM_KEY", SECRET)
    with TeacherServer(lambda im, req: "yes", logprobs=lambda req: TOP) as srv:
        judge = EndpointJudge(srv.url, "rm", api_key_env="RM_KEY", max_retries=0)
        scores = judge.scores([_image((200, 10, 10)), _image((10, 200, 10))], ["a", "b"])
    assert scores == [pytest.approx(0.7 / 0.9)] * 2
    assert srv.auth == {f"Bearer {SECRET}"}
    sent = srv.requests[0]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5 and sent["max_tokens"] == 1


def test_endpoint_without_logprobs_or_without_yes_no_is_an_error_not_zero():
    with TeacherServer(lambda im, req: "yes") as srv:  # no logprobs in the reply (as transformers serve)
        (result,) = EndpointJudge(srv.url, "rm", max_retries=0).scores([_image((1, 2, 3))], ["x"])
    assert isinstance(result, JudgeError) and "no logprobs" in str(result)
    with TeacherServer(lambda im, req: "hmm", logprobs=lambda req: [("maybe", -1.0), ("perhaps", -2.0)] * 3) as srv:
        (result,) = EndpointJudge(srv.url, "rm", max_retries=0).scores([_image((1, 2, 3))], ["x"])
    assert isinstance(result, JudgeError) and "neither" in str(result)


@pytest.mark.parametrize("top", [[("yes", -0.1)], []], ids=["one logprob", "none"])
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_fewer_logprobs_than_asked_follow_the_failure_policy(top, policy):
    # The released setup lost R_loc this way: vLLM answered fewer top logprobs than requested.
    with TeacherServer(lambda im, req: "yes", logprobs=lambda req: top) as srv:
        judge = EndpointJudge(srv.url, "rm", max_retries=0)
        reward = LocalizabilityReward(judge, policy, max_failure_rate=1.0, group_size=2)
        if policy == "raise":
            with pytest.raises(JudgeError, match=r"returned \d of the 5 top logprobs.*--max-logprobs 5"):
                reward(COMPLETIONS[:2], image=[_image((9, 9, 9))] * 2)
        else:
            assert reward(COMPLETIONS[:2], image=[_image((9, 9, 9))] * 2) == [None, None]  # never 0 or NaN
    assert reward.failed == 2


def test_raise_policy_stops_training_and_never_shows_the_key(monkeypatch):
    monkeypatch.setenv("RM_KEY", SECRET)
    with TeacherServer(lambda im, req: "yes", fault=lambda n, d: "401echo", logprobs=lambda req: TOP) as srv:
        reward = LocalizabilityReward(EndpointJudge(srv.url, "rm", api_key_env="RM_KEY", max_retries=0), "raise")
        with pytest.raises(JudgeError) as err:
            reward(COMPLETIONS[:2], image=[_image((5, 5, 5))] * 2)
    assert "failed on 2 of 2" in str(err.value) and "rm_on_failure: skip" in str(err.value)
    assert SECRET not in str(err.value)
    assert reward.failed == 2 and reward.judged == 2


def test_skip_policy_drops_the_whole_group_counts_it_and_stops_past_the_rate():
    bad, good = _image((250, 0, 0)), _image((0, 0, 250))
    doomed = _digest(bad)
    metrics: list[tuple[str, float]] = []

    def log_metric(name: str, value: float) -> None:
        metrics.append((name, value))

    fault = lambda n, d: "500" if d == doomed else None  # noqa: E731
    with TeacherServer(lambda im, req: "yes", fault=fault, logprobs=lambda req: TOP) as srv:
        judge = EndpointJudge(srv.url, "rm", max_retries=0)
        reward = LocalizabilityReward(judge, "skip", max_failure_rate=0.4, group_size=2, min_judged=4)
        # Two prompts x two generations: the first prompt's image fails for its first completion only.
        images = [bad, good, good, good]
        failed_once: list[str] = []

        def once(n: int, d: str) -> str | None:
            if d == doomed and not failed_once:
                failed_once.append(d)
                return "500"
            return None

        srv.fault = once
        out = reward(COMPLETIONS, image=images, log_metric=log_metric)
        assert out[:2] == [None, None]  # the failed completion's whole group is left out ...
        assert out[2:] == [pytest.approx(0.7 / 0.9)] * 2  # ... the other group is scored
        assert metrics == [("localizability/failures", 1.0)]
        assert (reward.failed, reward.judged) == (1, 4)
        srv.fault = fault
        with pytest.raises(JudgeError, match="over rm_max_failure_rate"):
            reward(COMPLETIONS, image=[bad, bad, bad, good], log_metric=log_metric)  # 4 of 8 > 40 %


def test_reward_needs_the_image_column():
    reward = LocalizabilityReward(EndpointJudge("http://127.0.0.1:9/v1", "rm"), "skip")
    with pytest.raises(JudgeError, match="image column"):
        reward(COMPLETIONS[:1])


def test_local_judge_on_the_tiny_model(tiny_model):
    import torch

    judge = LocalJudge(str(tiny_model), batch_size=2)
    images = [_image((200, 30, 30)), _image((30, 30, 200)), _image((30, 200, 30))]
    texts = ["<think>a red bus</think>", "<think>snow</think><answer>country: Norway\ncity: Oslo</answer>", "x"]
    scores = judge.scores(images, texts)
    assert all(isinstance(s, float) and 0.0 < s < 1.0 for s in scores)
    # Batching (left padding) does not change a score.
    alone = LocalJudge(judge.model, judge.processor, batch_size=1).scores(images, texts)
    assert alone == pytest.approx(scores, abs=1e-4)
    # With a zeroed output layer every token is equally likely: the share is the count of yes/no first tokens.
    with torch.no_grad():
        judge.model.lm_head.weight.zero_()
    n_yes, n_no = len(judge.token_ids["yes"]), len(judge.token_ids["no"])
    assert judge.scores(images[:1], texts[:1]) == [pytest.approx(n_yes / (n_yes + n_no))]


def test_judge_prompt_is_the_reward_model_training_prompt():
    from globe_train.data import rows_for

    record = {
        "teachers": [
            {"parsed": True, "localizable": True, "reasoning": "a tram", "country": "Portugal", "city": "Lisbon"},
            {"parsed": True, "localizable": False, "reasoning": "a white wall", "country": "", "city": ""},
            {"parsed": False, "localizable": True, "reasoning": "", "raw": "garbled"},
            {"parsed": True, "localizable": None, "reasoning": "no verdict"},
        ]
    }
    rows = rows_for("rm", "IMG", record)
    assert [r["completion"][0]["content"] for r in rows] == ["yes", "no"]
    first = rows[0]["prompt"]
    asked = judge_messages(first[1]["content"])
    assert first[0] == asked[0]  # the same system rule the judge sends
    assert first[1]["content"] == "<think>a tram</think><answer>country: Portugal\ncity: Lisbon</answer>"


def test_recipe_checks_and_reward_registry():
    with pytest.raises(ValueError, match="exactly one reward model"):
        GRPOScriptArguments(reward_funcs=["localizability"])
    with pytest.raises(ValueError, match="unknown reward"):
        GRPOScriptArguments(reward_funcs=["geo_accuracy", "vibes"])
    with pytest.raises(ValueError, match="rm_endpoint_model"):
        GRPOScriptArguments(rm_endpoint="http://x/v1")
    args = GRPOScriptArguments(
        reward_funcs=["geo_accuracy", "format", "coordinate"], geo_rule="official", coordinate_scale_km=100.0
    )
    funcs = get_reward_funcs(args)
    assert [f.__name__ for f in funcs] == ["geo_accuracy", "format", "coordinate"]
    usa = [[{"role": "assistant", "content": "<think>x</think><answer>country: USA\ncity: Boston</answer>"}]]
    # The official rule is bound: "USA" is not "United States" there.
    assert funcs[0](usa, country=["United States"], city=["Boston"]) == [0.0]
    alias = get_reward_funcs(GRPOScriptArguments(reward_funcs=["geo_accuracy"]))[0]
    assert alias(usa, country=["United States"], city=["Boston"]) == [1.0]
