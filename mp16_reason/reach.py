"""Whether the Hub can be asked, found in a second: offline mode, or an endpoint that does not answer, is one
line saying what to use instead (a local folder, an object store, an endpoint), never a minute of retries and a
traceback."""

from __future__ import annotations

# What reads a copy of the dataset instead of the Hub's, in each of the ways users ask for it.
USE_A_BUILD = (
    "read a build folder instead, local or s3://... (path= in Python, --data for globe eval, --dataset_name for "
    "globe train)"
)


class HubUnreachable(ConnectionError):
    """The Hub cannot be asked here (offline mode, no answer); the message names what to use instead."""


def require_hub(what: str, instead: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`HubUnreachable` at once when ``HF_HUB_OFFLINE`` is set or the Hub (``HF_ENDPOINT``) does not
    answer at all; any HTTP answer, an error included, means it is there."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        raise HubUnreachable(f"cannot {what}: HF_HUB_OFFLINE is set and the local cache has no copy; {instead}")
    try:
        get_session().get(f"{constants.ENDPOINT}/api/models", params={"limit": 1}, timeout=timeout_s)
    except Exception as exc:  # refused, DNS, TLS, timeouts, in whichever HTTP library's classes
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise HubUnreachable(
            f"cannot {what}: the Hub at {constants.ENDPOINT} does not answer ({type(exc).__name__}: {first}); "
            f"{instead}, or check the network and HF_ENDPOINT"
        ) from None
