"""R_loc: how localizable a reward model finds the photo, given a completion's reasoning.

The reward model answers "yes" or "no"; the reward is P(yes) / (P(yes) + P(no)) over its first answer token,
read either from an OpenAI-compatible endpoint that returns logprobs (vLLM) or from a transformers model loaded
in-process. ``globe train rm`` trains that model on the same prompt, so the judge and its training cannot drift.

A failing reward model is never scored 0: an unreachable one would look exactly like "not localizable" and
training would go on learning from noise. ``on_failure="raise"`` stops training at the first failure;
``"skip"`` leaves the reward out (``None``) for every completion of the affected prompt, so the advantages
inside that group stay comparable, counts and logs the failure, and still stops once failures exceed
``max_failure_rate`` of the completions judged.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from mp16_reason.answer import completion_text
from mp16_reason.endpoints import Endpoint
from mp16_reason.jpeg import jpeg_data_url

log = logging.getLogger(__name__)

SYSTEM = (
    "You judge photos for a geolocation task. Given a photo and someone's reasoning about where it was taken, "
    "decide whether the place can be worked out from what the photo visibly shows. Answer only yes or no."
)
YES, NO = "yes", "no"
POLICIES = ("raise", "skip")


class JudgeError(RuntimeError):
    """The reward model could not score a completion."""


def judge_messages(text: str) -> list[dict]:
    """The reward model's conversation: the system rule, then the photo (a placeholder part) and the text."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
    ]


def yes_share(p_yes: float, p_no: float) -> float:
    """P(yes) / (P(yes) + P(no)); an error when the model put no mass on either answer."""
    if p_yes + p_no <= 0.0:
        raise JudgeError("the reward model gave neither 'yes' nor 'no' any probability")
    return p_yes / (p_yes + p_no)


class EndpointJudge:
    """A reward model behind an OpenAI-compatible server that returns ``top_logprobs`` (vLLM does;
    ``transformers serve`` does not). ``temperature`` is sent as the released setup does (0.6); vLLM reports
    logprobs of the model's own distribution by default, so it does not change the score there."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        concurrency: int = 32,
        top_logprobs: int = 5,
        temperature: float = 0.6,
        timeout_s: float = 60.0,
        max_retries: int = 3,
    ) -> None:
        self.base_url, self.model = base_url, model
        self.endpoint = Endpoint(
            base_url, api_key_env, timeout_s, max_retries, who="the reward model", key_option="rm_api_key_env"
        )
        self.endpoint.key()  # a missing key fails when the reward is built, not at the first step
        self.concurrency, self.top_logprobs, self.temperature = concurrency, top_logprobs, temperature
        self.name = f"{model} @ {base_url}"

    async def _one(self, client, gate: asyncio.Semaphore, image: Any, text: str) -> float:
        messages = judge_messages(text)
        messages[1]["content"][0] = {"type": "image_url", "image_url": {"url": jpeg_data_url(image)}}
        async with gate:
            reply = await client.chat.completions.create(
                model=self.model,
                messages=messages,
                max_tokens=1,
                temperature=self.temperature,
                logprobs=True,
                top_logprobs=self.top_logprobs,
            )
        try:
            top = reply.choices[0].logprobs.content[0].top_logprobs
        except (AttributeError, IndexError, TypeError):
            raise JudgeError(f"{self.name} returned no logprobs (does the server support top_logprobs?)") from None
        if len(top or []) < self.top_logprobs:
            # A server capped below the request (vLLM's --max-logprobs) may hide the answer's other spelling.
            raise JudgeError(
                f"{self.name} returned {len(top or [])} of the {self.top_logprobs} top logprobs asked for; start "
                f"vLLM with --max-logprobs {self.top_logprobs} or more"
            )
        p = {YES: 0.0, NO: 0.0}
        for cand in top:
            word = cand.token.strip().lower()
            if word in p:
                p[word] += math.exp(cand.logprob)
        if p[YES] + p[NO] <= 0.0:
            tokens = ", ".join(repr(c.token) for c in top)
            raise JudgeError(f"{self.name}: neither 'yes' nor 'no' among the first token's top logprobs ({tokens})")
        return yes_share(p[YES], p[NO])

    async def ascores(self, images: Sequence[Any], texts: Sequence[str]) -> list[float | Exception]:
        client = self.endpoint.async_client()
        gate = asyncio.Semaphore(self.concurrency)
        async with client:
            jobs = [self._one(client, gate, im, t) for im, t in zip(images, texts)]
            results = await asyncio.gather(*jobs, return_exceptions=True)
        return [r if isinstance(r, float) else _as_error(r, self.endpoint.scrub) for r in results]

    def scores(self, images: Sequence[Any], texts: Sequence[str]) -> list[float | Exception]:
        """One probability per (image, text), or the exception that prevented it."""
        return asyncio.run(self.ascores(images, texts))


def _as_error(exc: BaseException, scrub: Callable[[str], str] = str) -> Exception:
    msg = scrub(f"{type(exc).__name__}: {exc}")
    return exc if isinstance(exc, JudgeError) else JudgeError(msg)


class LocalJudge:
    """A reward model loaded with transformers: one forward pass per batch, probabilities of the first answer
    token summed over the spellings of "yes" and of "no"."""

    def __init__(
        self,
        model: str | Any,
        processor: Any = None,
        revision: str | None = None,
        device: str | None = None,
        batch_size: int = 8,
    ) -> None:
        if isinstance(model, str):
            from .modeling import load_for_inference

            self.name = model
            model, processor, self.device = load_for_inference(model, revision, device)
        else:  # an already loaded model and its processor
            self.name, self.device = type(model).__name__, device or str(model.device)
        self.model, self.processor, self.batch_size = model.eval(), processor, batch_size
        tok = processor.tokenizer
        spellings = {YES: ("yes", "Yes", "YES", " yes", " Yes"), NO: ("no", "No", "NO", " no", " No")}
        first = {
            word: {ids[0] for v in variants if (ids := tok.encode(v, add_special_tokens=False))}
            for word, variants in spellings.items()
        }
        shared = first[YES] & first[NO]  # e.g. a lone space piece, which says nothing about the answer
        self.token_ids = {word: sorted(ids - shared) for word, ids in first.items()}
        if not (self.token_ids[YES] and self.token_ids[NO]):
            raise ValueError(f"{self.name}: the tokenizer has no first token that tells 'yes' from 'no'")

    def _batch(self, images: Sequence[Any], texts: Sequence[str]) -> list[float]:
        import torch

        prompts = [
            self.processor.apply_chat_template(judge_messages(t), add_generation_prompt=True, tokenize=False)
            for t in texts
        ]
        rgb = [im.convert("RGB") for im in images]
        inputs = self.processor(text=prompts, images=rgb, return_tensors="pt", padding=True, padding_side="left")
        with torch.inference_mode():
            logits = self.model(**inputs.to(self.device)).logits[:, -1, :].float()
        probs = torch.softmax(logits, dim=-1)
        p_yes = probs[:, self.token_ids[YES]].sum(-1).tolist()
        p_no = probs[:, self.token_ids[NO]].sum(-1).tolist()
        return [yes_share(y, n) for y, n in zip(p_yes, p_no)]

    def scores(self, images: Sequence[Any], texts: Sequence[str]) -> list[float | Exception]:
        out: list[float | Exception] = []
        for i in range(0, len(texts), self.batch_size):
            ims, ts = images[i : i + self.batch_size], texts[i : i + self.batch_size]
            try:
                out += self._batch(ims, ts)
            except Exception as exc:  # a failed batch fails its items; the policy decides what happens next
                out += [_as_error(exc)] * len(ts)
        return out


class LocalizabilityReward:
    """R_loc with TRL's reward signature. ``group_size`` is the number of generations per prompt (TRL passes
    a prompt's completions consecutively)."""

    __name__ = "localizability"

    def __init__(
        self,
        judge: EndpointJudge | LocalJudge,
        on_failure: str = "raise",
        max_failure_rate: float = 0.05,
        group_size: int = 1,
        min_judged: int = 64,
    ) -> None:
        if on_failure not in POLICIES:
            raise ValueError(f"on_failure={on_failure!r}: use one of {POLICIES}")
        self.judge, self.on_failure, self.max_failure_rate = judge, on_failure, max_failure_rate
        self.group_size, self.min_judged = max(1, group_size), min_judged
        self.judged = 0
        self.failed = 0

    def __call__(self, completions: list, image: list | None = None, images: list | None = None, **kwargs: Any):
        pictures = image if image is not None else [(ims or [None])[0] for ims in images or []]
        if len(pictures) != len(completions) or any(p is None for p in pictures):
            raise JudgeError("the localizability reward needs the dataset's image column ('image' or 'images')")
        results = self.judge.scores(pictures, [completion_text(c) for c in completions])
        bad = [i for i, r in enumerate(results) if isinstance(r, Exception)]
        self.judged += len(results)
        self.failed += len(bad)
        if log_metric := kwargs.get("log_metric"):
            log_metric("localizability/failures", float(len(bad)))
        if not bad:
            return results
        first = results[bad[0]]
        summary = f"localizability reward model {self.judge.name} failed on {len(bad)} of {len(results)}: {first}"
        if self.on_failure == "raise":
            raise JudgeError(f"{summary}. Fix the reward model, or set rm_on_failure: skip to leave such groups out")
        rate = self.failed / self.judged
        if self.judged >= self.min_judged and rate > self.max_failure_rate:
            raise JudgeError(
                f"{summary}; {self.failed} of {self.judged} failed so far ({rate:.1%}), over "
                f"rm_max_failure_rate {self.max_failure_rate:.1%}"
            )
        log.warning(
            "%s; their groups are left out of R_loc (%d of %d failed so far)", summary, self.failed, self.judged
        )
        g = self.group_size
        dropped = {i // g for i in bad}
        return [None if i // g in dropped else r for i, r in enumerate(results)]


def reward_from_args(args, group_size: int = 1) -> LocalizabilityReward:
    """R_loc as a GRPO recipe configures it (``args``: ``GRPOScriptArguments``)."""
    if args.rm_endpoint:
        judge: EndpointJudge | LocalJudge = EndpointJudge(
            args.rm_endpoint, args.rm_endpoint_model, args.rm_api_key_env, concurrency=args.rm_concurrency
        )
    else:
        judge = LocalJudge(args.rm_model, revision=args.rm_revision, batch_size=args.rm_batch_size)
    return LocalizabilityReward(judge, args.rm_on_failure, args.rm_max_failure_rate, group_size)
