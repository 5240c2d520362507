"""One way to reach an OpenAI-compatible endpoint (vLLM, ``transformers serve``, OpenAI), for every client the
project makes: teachers, predictors and the reward-model judge.

The key rule is the same everywhere: a named environment variable must be set, and no name sends no key
(``"EMPTY"``, which local servers accept). A key is never read from a variable the user did not name, so a
local or third-party server never receives the OpenAI key by accident. Errors pass through :meth:`scrub`
before they are shown or logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

NO_KEY = "EMPTY"  # what the SDK sends when there is no key; vLLM and transformers serve accept any


class MissingApiKey(ValueError):
    """The variable named for an endpoint's key is not set."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach one server. ``who`` names the user of the endpoint in error messages."""

    base_url: str
    api_key_env: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 5
    who: str = "the endpoint"
    key_option: str = "the key variable"  # what the user names the variable with, for the fix message

    def key(self) -> str:
        if not self.api_key_env:
            return NO_KEY
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise MissingApiKey(
                f"{self.who} reads its API key from ${self.api_key_env}, which is not set; export it, or leave "
                f"{self.key_option} out for servers without keys"
            )
        return key

    def scrub(self, text: str) -> str:
        """``text`` with the key masked, for messages and logs."""
        if not self.api_key_env:
            return text
        key = os.environ.get(self.api_key_env, "")
        return text.replace(key, "***") if key else text

    def async_client(self, max_retries: int | None = None, http_client: Any = None) -> Any:
        """An ``openai.AsyncOpenAI``; ``max_retries=0`` for callers that classify and retry failures themselves."""
        from openai import AsyncOpenAI

        return AsyncOpenAI(**self._options(max_retries), http_client=http_client)

    def client(self, max_retries: int | None = None) -> Any:
        """A blocking ``openai.OpenAI`` (file uploads and batch polling)."""
        from openai import OpenAI

        return OpenAI(**self._options(max_retries))

    def _options(self, max_retries: int | None) -> dict:
        retries = self.max_retries if max_retries is None else max_retries
        # The SDK retries 408/409/429/5xx and connection errors with exponential backoff and honours Retry-After.
        return {"base_url": self.base_url, "api_key": self.key(), "max_retries": retries, "timeout": self.timeout_s}

    def describe_key(self) -> str:
        """The key as a fix message names it."""
        return f"the key in ${self.api_key_env}" if self.api_key_env else f"no key ({self.key_option} is not set)"
