"""Structured logs and redaction: real stderr, parsed JSON lines, secrets wherever they hide."""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from refresher.config import LoggingSettings
from refresher.logging import configure_logging, reset_logging
from refresher.redaction import (
    REDACTED,
    Redactor,
    _SecretSet,
    active_redactor,
    forget_secrets,
    redact_query,
    redact_text,
    redact_value,
    register_secrets,
)

ACCESS = "ROW_accessTokenValue_0123456789"
REFRESH = "ROW_refreshTokenValue_abcdef012"
PARTNER_KEY = "shpk_partnerkey_7a6b5c4d3e2f1a0b"


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Configure JSON logging to (captured) stderr; return a reader of the parsed lines."""
    configure_logging(LoggingSettings(level="debug", format="json"), secrets=[PARTNER_KEY])

    def read() -> list[dict[str, Any]]:
        err = capsys.readouterr().err
        return [json.loads(line) for line in err.splitlines() if line.strip()]

    yield read
    reset_logging()
    forget_secrets()


def test_registered_secrets_never_reach_the_output(logs: Callable[[], list[dict[str, Any]]]) -> None:
    register_secrets([ACCESS, REFRESH])
    log = structlog.get_logger("refresher.test")
    log.info(f"got {ACCESS} back", app="shopee-sg")
    log.info("nested", details={"answer": {"data": [f"x{REFRESH}y", {"deep": ACCESS}]}}, n=3)
    try:
        raise RuntimeError(f"platform said: invalid refresh_token {REFRESH}")
    except RuntimeError:
        log.exception("refresh.crashed", app="shopee-sg")
    log.error("as value", error=ValueError(f"bad {ACCESS}"))
    log.info("config", note=f"partner key is {PARTNER_KEY}")

    lines = logs()
    raw = json.dumps(lines)
    for secret in (ACCESS, REFRESH, PARTNER_KEY):
        assert secret not in raw
    by_event = {line["event"]: line for line in lines}
    assert by_event[f"got {REDACTED} back"]["app"] == "shopee-sg"
    assert by_event["nested"]["details"] == {"answer": {"data": [f"x{REDACTED}y", {"deep": REDACTED}]}}
    assert by_event["nested"]["n"] == 3
    crashed = by_event["refresh.crashed"]
    assert "Traceback" in crashed["exception"] and "RuntimeError" in crashed["exception"]
    assert REDACTED in crashed["exception"]
    assert by_event["as value"]["error"] == f"ValueError: bad {REDACTED}"


def test_json_lines_have_utc_timestamp_level_and_logger(logs: Callable[[], list[dict[str, Any]]]) -> None:
    structlog.get_logger("refresher.refresh").warning("refresh", outcome="failure", duration_ms=12)
    [line] = logs()
    assert line["level"] == "warning" and line["logger"] == "refresher.refresh"
    assert line["outcome"] == "failure" and line["duration_ms"] == 12
    stamp = dt.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == dt.timedelta(0)


def test_secret_keys_are_redacted_whatever_the_value(logs: Callable[[], list[dict[str, Any]]]) -> None:
    log = structlog.get_logger("t")
    log.info(
        "keys",
        access_token="short",  # too short to register, still hidden by its key
        sign="abc123",
        headers={"Authorization": "Bearer zzzzzzzzzzzz", "X-Trace": "keep-me"},
        client_secret=None,  # nothing to hide: stays null
        admin_token="t0ken-of-the-admin",
        error_code="invalid_grant",
    )
    [line] = logs()
    assert line["access_token"] == REDACTED and line["sign"] == REDACTED and line["admin_token"] == REDACTED
    assert line["headers"] == {"Authorization": REDACTED, "X-Trace": "keep-me"}
    assert line["client_secret"] is None
    assert line["error_code"] == "invalid_grant"


def test_secrets_in_urls_and_free_text_are_redacted(logs: Callable[[], list[dict[str, Any]]]) -> None:
    logging.getLogger("httpx").warning(
        "HTTP Request: GET https://partner.shopeemobile.com/api/v2/x?partner_id=1&sign=deadbeef99&access_token=tok123&code=c0de42"
    )
    structlog.get_logger("t").info("text", detail='body {"refresh_token": "rt-abc-def", "shop_id": 7}')
    lines = logs()
    url_line = lines[0]["event"]
    assert "deadbeef99" not in url_line and "tok123" not in url_line and "c0de42" not in url_line
    assert "partner_id=1" in url_line and f"sign={REDACTED}" in url_line
    assert "rt-abc-def" not in lines[1]["detail"] and '"shop_id": 7' in lines[1]["detail"]


def test_error_codes_in_messages_survive() -> None:
    # "code=" in an error message is the platform's error code, not an OAuth code: keep it readable.
    assert redact_text("refresh token rejected code=invalid_grant http=400") == (
        "refresh token rejected code=invalid_grant http=400"
    )
    assert redact_text("Authorization: Bearer abcdefghijk") == f"Authorization: Bearer {REDACTED}"


def test_stdlib_loggers_share_the_pipeline_and_level(logs: Callable[[], list[dict[str, Any]]]) -> None:
    configure_logging(LoggingSettings(level="warning"))  # a reload: replaces, never stacks handlers
    logging.getLogger("uvicorn.error").info("dropped by level")
    logging.getLogger("apscheduler.scheduler").warning("job %s missed by %s", "tick", f"{PARTNER_KEY}")
    structlog.get_logger("t").info("dropped too")
    lines = logs()
    assert len(lines) == 1
    assert lines[0]["logger"] == "apscheduler.scheduler" and lines[0]["level"] == "warning"
    assert lines[0]["event"] == f"job tick missed by {REDACTED}"
    handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "_StderrHandler"]
    assert len(handlers) == 1


def test_console_format_is_readable_and_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(level="info", format="console"), secrets=[ACCESS])
    try:
        structlog.get_logger("t").info("refresh", token_value=ACCESS, app="tts-a")
        err = capsys.readouterr().err
    finally:
        reset_logging()
        forget_secrets()
    assert "refresh" in err and "app=tts-a" in err
    assert ACCESS not in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.splitlines()[0])


def test_short_and_empty_values_are_not_registered() -> None:
    secrets = _SecretSet()
    secrets.add([None, "", "abc", "12345", "123456"])
    assert len(secrets) == 1 and "123456" in secrets
    assert secrets.redact("id 12345 and 123456") == f"id 12345 and {REDACTED}"


def test_secret_set_is_bounded_and_keeps_the_newest() -> None:
    secrets = _SecretSet(limit=3)
    secrets.add(["secret-1", "secret-2", "secret-3"])
    secrets.add(["secret-1"])  # seen again: now the newest
    secrets.add(["secret-4"])
    assert len(secrets) == 3
    assert "secret-2" not in secrets and "secret-1" in secrets
    assert secrets.redact("secret-2 secret-1 secret-4") == f"secret-2 {REDACTED} {REDACTED}"


def test_overlapping_secrets_are_replaced_whole() -> None:
    secrets = _SecretSet()
    secrets.add(["abcdef", "abcdefghij"])
    assert secrets.redact("xabcdefghijx abcdefz") == f"x{REDACTED}x {REDACTED}z"


def test_full_process_output_has_no_secret() -> None:
    """A real interpreter, real stderr: what an operator's journal would receive."""
    script = textwrap.dedent(
        f"""
        import logging, structlog
        from refresher.config import LoggingSettings
        from refresher.logging import configure_logging
        from refresher.redaction import register_secrets
        configure_logging(LoggingSettings(), secrets=[{PARTNER_KEY!r}])
        register_secrets([{ACCESS!r}, None, ""])
        log = structlog.get_logger("refresher.refresh")
        log.info("refresh", outcome="success", echo={ACCESS!r})
        logging.getLogger("uvicorn.error").error("crash with %s", {PARTNER_KEY!r})
        try:
            {{}}["k"] = 1 / 0
        except ZeroDivisionError:
            logging.getLogger("alembic").exception("migration failed near {ACCESS}")
        log.debug("not at info")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [line["event"] for line in lines] == [
        "refresh",
        f"crash with {REDACTED}",
        f"migration failed near {REDACTED}",
    ]
    assert "ZeroDivisionError" in lines[2]["exception"]
    assert ACCESS not in proc.stderr and PARTNER_KEY not in proc.stderr


_TOKEN_CHARS = st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="-_.~+/=:")


@given(
    secrets=st.lists(st.text(_TOKEN_CHARS, min_size=6, max_size=40), min_size=1, max_size=5),
    filler=st.lists(st.text(_TOKEN_CHARS | st.sampled_from(" ,;\"'&?{}[]"), max_size=12), min_size=1, max_size=6),
)
def test_no_registered_secret_survives_any_surrounding(secrets: list[str], filler: list[str]) -> None:
    """Whatever text surrounds them, and however secrets overlap, none comes out whole."""
    pool = _SecretSet()
    pool.add(secrets)
    text = "".join(f + s for f, s in zip(filler * len(secrets), secrets, strict=False)) + filler[-1]
    out = pool.redact(text)
    for secret in secrets:
        assert secret not in out


def test_secret_in_a_mapping_key_is_redacted() -> None:
    register_secrets([ACCESS])
    try:
        assert redact_value({ACCESS: 1, "nested": {"k": [ACCESS]}}) == {REDACTED: 1, "nested": {"k": [REDACTED]}}
    finally:
        forget_secrets()


def test_a_configured_redactor_object_is_the_pipeline_processor(capsys: pytest.CaptureFixture[str]) -> None:
    """The redactor is an object configured with the secrets; the pipeline uses that very object."""
    own = Redactor([PARTNER_KEY])
    installed = configure_logging(LoggingSettings(level="info"), secrets=[ACCESS], redactor=own)
    try:
        assert installed is own and active_redactor() is own and len(own) == 2
        own.add([REFRESH])
        structlog.get_logger("t").info("seen", values=[PARTNER_KEY, ACCESS, REFRESH])
        line = json.loads(capsys.readouterr().err.splitlines()[-1])
        assert line["values"] == [REDACTED, REDACTED, REDACTED]
        # Another redactor knows none of them: the secrets live in the object, not in the module.
        assert Redactor().redact_text(f"x {ACCESS}") == f"x {ACCESS}"
    finally:
        reset_logging()
        own.forget()
        configure_logging(LoggingSettings(), redactor=Redactor())
        reset_logging()


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/connect/a?invite=1a.QQQ&page=2", "/connect/a?invite=***&page=2"),
        ("/callback/a?state=s1&code=c1&shop_id=77", "/callback/a?state=***&code=***&shop_id=77"),
        ("/x?partner_key=k&api_key=k&x_app_secret=s&sign=abc&my_token=t", None),
        ("/readyz", "/readyz"),
        ("/x?state=", "/x?state="),
    ],
)
def test_access_log_targets_lose_their_secret_query_values(target: str, expected: str | None) -> None:
    out = redact_query(target)
    if expected is None:
        assert out.count("=***") == 5 and "=k" not in out and "=t" not in out
    else:
        assert out == expected


@pytest.mark.parametrize("enabled", [False, True])
def test_access_log_follows_the_setting_across_reconfiguration(
    capsys: pytest.CaptureFixture[str], enabled: bool
) -> None:
    access = logging.getLogger("uvicorn.access")
    try:
        configure_logging(LoggingSettings(level="info", access_log=True))
        configure_logging(LoggingSettings(level="info", access_log=enabled))  # a reload
        assert access.hasHandlers() is enabled  # what uvicorn asks before logging a connection
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/callback/a?state=s3cr3tstate&x=1", "1.1", 200)
        err = capsys.readouterr().err
    finally:
        reset_logging()
    if enabled:
        (line,) = [json.loads(x) for x in err.splitlines()]
        assert line["event"] == '127.0.0.1:1 - "GET /callback/a?state=***&x=1 HTTP/1.1" 200'
    else:
        assert err == ""


def test_a_remembered_redaction_never_outlives_a_new_secret() -> None:
    # The redactor remembers short texts it has redacted (log lines repeat them); a secret learnt
    # afterwards must still be removed from the very same text, and a forgotten one no longer is.
    redactor = Redactor()
    secret = "rotated-access-token-7f3a9c1e5b"
    line = f"GET /v1/x {secret}"
    assert redactor.redact_text(line) == line  # not a secret yet: remembered as is
    assert redactor.redact_text(line) == line
    redactor.add([secret])
    assert secret not in redactor.redact_text(line)
    assert secret not in redactor.redact_value({"path": line})
    redactor.forget()
    assert redactor.redact_text(line) == line
