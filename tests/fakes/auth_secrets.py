"""The texts that give an SMTP AUTH password away, for tests that assert none of them escapes."""

from __future__ import annotations

import base64


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def password_only_runs(password: bytes) -> list[str]:
    """For each of the three alignments, the base64 characters that encode password bytes only.

    Character i of a base64 text carries bits 6i..6i+5, i.e. bytes 6i//8 .. (6i+5)//8; behind a
    prefix of k bytes the characters whose bytes all lie within the password depend on it alone,
    whatever comes before or after it."""
    runs = []
    for k in range(3):
        encoded = b64(b"\xff" * k + password + b"\xff" * 3)
        pure = [ch for i, ch in enumerate(encoded) if (6 * i) // 8 >= k and (6 * i + 5) // 8 < k + len(password)]
        runs.append("".join(pure))
    return runs


def secret_forms(username: str, password: str) -> dict[str, str]:
    """Every text that would give the password away, by name (AUTH PLAIN's token, AUTH LOGIN's line,
    and the password's base64 characters at each alignment inside a longer base64 text)."""
    raw = password.encode()
    forms = {
        "password": password,
        "PLAIN token": b64(f"\0{username}\0{password}".encode()),
        "base64(password)": b64(raw),
        "base64(password) unpadded": b64(raw).rstrip("="),
        **{f"base64 alignment {k}": run for k, run in enumerate(password_only_runs(raw))},
    }
    assert all(len(form) >= 16 for form in forms.values()), "use a longer password: short forms match by chance"
    return forms


def leaks(text: str, forms: dict[str, str]) -> list[str]:
    """The forms found in `text`, as is or hex-encoded (net-snmp prints odd strings as Hex-STRING)."""
    squeezed = "".join(text.split()).lower()
    return [name for name, form in forms.items() if form in text or form.encode().hex() in squeezed]
