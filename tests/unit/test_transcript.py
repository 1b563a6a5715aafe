"""monitor/model/transcript.py: bounded, redacted dialogue records."""

from __future__ import annotations

import base64

from monitor.model.transcript import (
    CUT_MARK,
    MAX_BYTES,
    MAX_LINE,
    MAX_LINES,
    MAX_LINES_LONG,
    REDACTED,
    Direction,
    Transcript,
    TranscriptRecorder,
)

PASSWORD = "Quokka-Secret-93"


class TestRecorder:
    def test_lines_keep_their_order_direction_and_a_rising_time(self) -> None:
        recorder = TranscriptRecorder()
        recorder.note("connected to 127.0.0.1:25")
        recorder.received("220 mail.test ESMTP")
        recorder.sent("EHLO monitor.test")
        recorder.tls("TLSv1.3 TLS_AES_256_GCM_SHA384 subject CN=mail.test")
        lines = recorder.transcript().lines
        assert [(line.direction, line.text) for line in lines] == [
            (Direction.NOTE, "connected to 127.0.0.1:25"),
            (Direction.RECEIVED, "220 mail.test ESMTP"),
            (Direction.SENT, "EHLO monitor.test"),
            (Direction.TLS, "TLSv1.3 TLS_AES_256_GCM_SHA384 subject CN=mail.test"),
        ]
        assert [line.at for line in lines] == sorted(line.at for line in lines)

    def test_secrets_are_replaced_in_plain_text_and_base64_and_auth_lines_keep_their_verb(self) -> None:
        recorder = TranscriptRecorder([PASSWORD])
        encoded = base64.b64encode(f"\0probe\0{PASSWORD}".encode()).decode()
        recorder.sent(f"AUTH PLAIN {encoded}", secret=True)
        recorder.received(f"535 5.7.8 bad password {PASSWORD}")
        recorder.received(f"334 {base64.b64encode(PASSWORD.encode()).decode()}")
        recorder.sent("AUTH LOGIN", secret=True)
        recorder.received("334 VXNlcm5hbWU6", secret=True)
        texts = [line.text for line in recorder.transcript().lines]
        assert texts == [
            f"AUTH PLAIN {REDACTED}",
            f"535 5.7.8 bad password {REDACTED}",
            f"334 {REDACTED}",
            "AUTH LOGIN",
            f"334 {REDACTED}",
        ]
        as_text = recorder.transcript().as_text()
        assert PASSWORD not in as_text
        assert base64.b64encode(PASSWORD.encode()).decode() not in as_text

    def test_a_secret_learned_later_is_redacted_from_then_on(self) -> None:
        recorder = TranscriptRecorder()
        recorder.add_secret(PASSWORD)
        recorder.sent(f"PASS {PASSWORD}")
        assert recorder.transcript().lines[0].text == f"PASS {REDACTED}"

    def test_control_characters_are_shown_escaped(self) -> None:
        recorder = TranscriptRecorder()
        recorder.received("220 \x1b[31mred\x07")
        assert recorder.transcript().lines[0].text == "220 \\x1b[31mred\\x07"

    def test_a_long_line_is_cut_with_a_mark(self) -> None:
        recorder = TranscriptRecorder()
        recorder.received("250-" + "x" * 5000)
        text = recorder.transcript().lines[0].text
        assert len(text) == MAX_LINE
        assert text.endswith(CUT_MARK)

    def test_lines_beyond_the_bound_are_dropped_and_the_transcript_says_so(self) -> None:
        recorder = TranscriptRecorder()
        for i in range(MAX_LINES + 10):
            recorder.received(f"250-line {i}")
        transcript = recorder.transcript()
        assert len(transcript.lines) == MAX_LINES
        assert transcript.cut
        assert (
            transcript.as_text()
            .splitlines()[-1]
            .endswith(f"transcript cut: what came after these {MAX_LINES} lines was dropped")
        )

    def test_bytes_are_bounded_too(self) -> None:
        recorder = TranscriptRecorder()
        for _ in range(MAX_LINES):
            recorder.received("y" * MAX_LINE)
        transcript = recorder.transcript()
        assert sum(len(line.text.encode()) for line in transcript.lines) <= MAX_BYTES
        assert transcript.cut


class TestSecretsAndForm:
    def test_a_secret_learned_later_is_redacted_from_lines_recorded_before(self) -> None:
        recorder = TranscriptRecorder()
        recorder.received(f"250-X-ECHO {PASSWORD}")
        recorder.add_secret(PASSWORD)
        assert recorder.transcript().lines[0].text == f"250-X-ECHO {REDACTED}"

    def test_every_encoding_of_a_secret_is_redacted(self) -> None:
        from tests.fakes.auth_secrets import leaks, secret_forms

        recorder = TranscriptRecorder([PASSWORD])
        forms = secret_forms("abc", PASSWORD)
        for name, form in forms.items():
            recorder.received(f"535 {name}: {form} and hex {form.encode().hex()}")
        recorder.received(f"535 hex {PASSWORD.encode().hex().upper()}")
        text = recorder.transcript().as_text()
        assert leaks(text, forms) == [], text
        assert PASSWORD.encode().hex().upper() not in text

    def test_mailbox_logins_keep_their_command_only(self) -> None:
        recorder = TranscriptRecorder()
        recorder.sent(f'A1 LOGIN "probe" "{PASSWORD}"', secret=True)
        recorder.sent(f"PASS {PASSWORD}", secret=True)
        assert [line.text for line in recorder.transcript().lines] == [f"A1 LOGIN {REDACTED}", f"PASS {REDACTED}"]

    def test_pickled_and_saved_forms_give_the_same_transcript(self) -> None:
        import pickle

        from pydantic import TypeAdapter

        recorder = TranscriptRecorder()
        recorder.note("trying 127.0.0.1 port 25")
        recorder.received("220 mail.test")
        for _ in range(MAX_LINES):
            recorder.sent("NOOP")
        transcript = recorder.transcript()
        assert transcript.cut
        assert pickle.loads(pickle.dumps(transcript)) == transcript  # noqa: S301 -- our own bytes
        adapter = TypeAdapter(Transcript)
        wire = adapter.dump_python(transcript, mode="json")
        assert wire["lines"][1][1:] == ["S", "220 mail.test"]
        assert adapter.validate_python(wire) == transcript
        assert adapter.validate_json(adapter.dump_json(transcript)) == transcript

    def test_a_hand_made_saved_transcript_is_refused_or_bounded(self) -> None:
        import pytest
        from pydantic import TypeAdapter, ValidationError

        adapter = TypeAdapter(Transcript)
        bad_rows = (
            {"lines": [[0, "X", "a"]]},
            {"lines": [["0", "S", "a"]]},
            {"lines": [[0, ["S"], "a"]]},
            {"lines": "abc"},
        )
        odd_rows = ({"lines": [[True, "S", "a"]]}, {"lines": [[10**400, "S", "a"]]}, {"lines": [[0, "S", "a", "b"]]})
        for bad in (*bad_rows, *odd_rows, {"lines": [[0, "S", 7]]}, {"lines": [[0, "S"]]}, [1, 2]):
            with pytest.raises(ValidationError):
                adapter.validate_python(bad)
        huge = adapter.validate_python({"lines": [[0.0, "S", "y" * 100_000]] * 1000, "cut": False})
        assert len(huge.lines) == MAX_LINES_LONG
        assert all(len(line.text) <= MAX_LINE for line in huge.lines)
        smuggled = adapter.validate_python({"lines": [[0.0, "S", "220 \x1b[2Jgone"]], "cut": False})
        assert smuggled.lines[0].text == "220 \\x1b[2Jgone"


def test_the_concluding_note_is_kept_past_the_bounds_in_place_of_the_last_lines() -> None:
    recorder = TranscriptRecorder()
    for i in range(MAX_LINES + 5):
        recorder.received(f"250-line {i}")
    recorder.conclude("failed in fetch: timeout: no answer")
    transcript = recorder.transcript()
    assert transcript.cut
    assert len(transcript.lines) == MAX_LINES
    assert transcript.lines[-1].text == "failed in fetch: timeout: no answer"
    assert transcript.lines[-2].text == f"250-line {MAX_LINES - 2}"

    full = TranscriptRecorder()
    for _ in range(MAX_LINES):
        full.received("y" * MAX_LINE)
    full.conclude("z" * 2000)
    lines = full.transcript().lines
    assert lines[-1].text.startswith("zzz")
    assert sum(len(line.text.encode()) for line in lines) <= MAX_BYTES


def test_a_longer_bound_for_runs_of_several_sessions_is_capped() -> None:
    long = TranscriptRecorder(max_lines=100)
    for i in range(150):
        long.received(f"250 {i}")
    assert len(long.transcript().lines) == 100
    capped = TranscriptRecorder(max_lines=10**6)
    for i in range(MAX_LINES_LONG + 10):
        capped.received(f"250 {i}")
    assert len(capped.transcript().lines) == MAX_LINES_LONG


def test_a_password_echoed_as_an_imap_quoted_string_is_redacted() -> None:
    password = 'Wrong"Pa55\\word-long'
    recorder = TranscriptRecorder([password])
    recorder.received('A1 NO [AUTHENTICATIONFAILED] bad "Wrong\\"Pa55\\\\word-long"')
    assert recorder.transcript().lines[0].text == f'A1 NO [AUTHENTICATIONFAILED] bad "{REDACTED}"'
