"""The password policy: length, no control characters, not the username or email, not common.

``common_passwords.txt.gz`` holds the 30,000 most common passwords of zxcvbn's frequency list
(MIT licence, Dropbox / Daniel Wolf's zxcvbn-python 4.5.0), most common first, one per line.
It ships in the package, so the check never makes a network call; it is read once, lazily.
"""

from __future__ import annotations

import gzip
import unicodedata
from functools import cache
from importlib import resources

from cyxwiz.errors import InvalidInput

MIN_LENGTH = 8
MAX_LENGTH = 256
COMMON_PASSWORDS_FILE = "common_passwords.txt.gz"

# Stable problem codes (docs/api.md): what the registrant should change.
WEAK_PASSWORD = "weak_password"  # noqa: S105 (a code) shorter than MIN_LENGTH
INVALID_PASSWORD = "invalid_password"  # noqa: S105 too long, or control / unencodable characters
PASSWORD_LIKE_USERNAME = "password_like_username"  # noqa: S105 equals the username or the email
COMMON_PASSWORD = "common_password"  # noqa: S105 on the shipped list of common passwords


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, lower-cased."""
    data = resources.files("cyxwiz.accounts").joinpath(COMMON_PASSWORDS_FILE).read_bytes()
    text = gzip.decompress(data).decode("utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


def has_control_characters(text: str) -> bool:
    """True if ``text`` holds a control character (NUL, newline, DEL, ...) or a lone surrogate."""
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)


def check_password(password: str, *, username: str = "", email: str = "") -> None:
    """Return if ``password`` is acceptable for this account, else InvalidInput with a code."""
    if len(password) < MIN_LENGTH:
        raise InvalidInput(f"password must be at least {MIN_LENGTH} characters", code=WEAK_PASSWORD)
    if len(password) > MAX_LENGTH:
        raise InvalidInput(
            f"password must be at most {MAX_LENGTH} characters", code=INVALID_PASSWORD
        )
    if has_control_characters(password):
        raise InvalidInput(
            "password must not contain control characters (NUL, tab, newline, ...)",
            code=INVALID_PASSWORD,
        )
    folded = password.casefold()
    for same in (username, email):
        if same and folded == same.strip().casefold():
            raise InvalidInput(
                "password must not be your username or email", code=PASSWORD_LIKE_USERNAME
            )
    if password.lower() in common_passwords() or password.strip().lower() in common_passwords():
        raise InvalidInput(
            "this password is one of the most commonly used; choose another",
            code=COMMON_PASSWORD,
        )
