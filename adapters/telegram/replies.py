"""What people read when something goes wrong: plain words, no library names, limits or byte
counts. The technical text goes to the log instead (and never a URL: file URLs hold the token)."""
from __future__ import annotations

from artchain.core.errors import ArtchainError, ChainError, ImageError, WeightsError

# An engine error's words (matched in order) -> the answer; {subject} names the picture.
IMAGE_ANSWERS = (
    (("MB of memory",), "{subject} is too large for me to process; please send a smaller one."),
    (("would make a",), "The result would be too large for me; please send a smaller picture."),
    (("too small", "must be at least", "px on each side"),
     "{subject} is too small for this style; please send a larger one."),
    (("too elongated",), "{subject} is too long and narrow for this style; please crop it closer to a square."),
    (("bytes is over the limit",), "{subject} is too large a file for me; please send a smaller one."),
    (("decompression bomb", "pixels"), "{subject} has too many pixels for me; please send a smaller one."),
)
UNREADABLE = "{subject} is not a picture I can read; please send a JPEG, PNG or WEBP image."
STYLE_UNAVAILABLE = "This style can't run right now; please pick another one."
TRY_AGAIN = "Sorry, that didn't work out; please try again in a while."


def friendly_error(exc: ArtchainError, sent_as_file: bool) -> str:
    """The answer to a job that failed with `exc`."""
    if isinstance(exc, ImageError):
        text = str(exc)
        subject = "The style image" if "style image" in text else "That file" if sent_as_file else "That picture"
        answer = next((answer for words, answer in IMAGE_ANSWERS if any(word in text for word in words)),
                      UNREADABLE)
        return answer.format(subject=subject)
    if isinstance(exc, (ChainError, WeightsError)):  # the bot's set-up, not the user's picture
        return STYLE_UNAVAILABLE
    return TRY_AGAIN  # a worker that vanished or ran out of time: nothing the user did


def describe_failure(exc: Exception) -> str:
    """What went wrong talking to Telegram, by type and status only: an aiohttp error's text holds
    the request URL, and file URLs hold the token."""
    status, errno = getattr(exc, "status", None), getattr(exc, "errno", None)
    detail = f"HTTP {status}" if status else f"errno {errno}" if errno else ""
    return type(exc).__name__ + (f" ({detail})" if detail else "")
