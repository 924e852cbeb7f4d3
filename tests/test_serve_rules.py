"""The server's rules as plain functions, without a network: who may connect (`access.py`), what a
page must look like (`protocol.py`), what the jitter buffer does with each frame (`jitter.py`).
Fast, so that `make mutation` can run them against every mutant of those modules."""
import logging

import numpy as np
import pytest
import sphn

from csmlab.errors import AudioFormatError, ConfigError
from csmlab.pipeline.jitter import JitterBuffer, JitterCounts, check_seq
from csmlab.serve.access import (RedactingAccessLogger, _hostname, access_denied, details_allowed, foreign_request,
                                 presented_token, redact)
from csmlab.serve.config import Settings
from csmlab.serve.protocol import (ProtocolError, audio_message, audio_payload, check_ogg_pages, error_message,
                                   ogg_crc, text_message)

LOOPBACK = Settings()
EXPOSED = Settings(host="0.0.0.0", token="s3cret")


# ---- access.py ------------------------------------------------------------------------------------
@pytest.mark.parametrize("line, logged", [
    ("GET /api/chat?token=abc HTTP/1.1", "GET /api/chat?token=<redacted> HTTP/1.1"),
    ("GET /x?a=1&TOKEN=abc&b=2 HTTP/1.1", "GET /x?a=1&TOKEN=<redacted>&b=2 HTTP/1.1"),
    ('"http://h/?token=a" "q?token=b"', '"http://h/?token=<redacted>" "q?token=<redacted>"'),
    ("GET /metrics HTTP/1.1", "GET /metrics HTTP/1.1"),
])
def test_redact_takes_every_token_value_out_and_nothing_else(line, logged):
    assert redact(line) == logged


def test_the_access_logger_redacts_the_request_line(caplog):
    from aiohttp.test_utils import make_mocked_request
    from aiohttp.web import Response

    logger = logging.getLogger("test.access")
    caplog.set_level(logging.INFO, logger="test.access")
    RedactingAccessLogger(logger, '%r %s "%{Referer}i" %Tf').log(
        make_mocked_request("GET", "/api/chat?token=abc", headers={"Referer": "http://h/?token=def"}), Response(), 0.25)
    assert caplog.records[-1].getMessage() == \
        'GET /api/chat?token=<redacted> HTTP/1.1 200 "http://h/?token=<redacted>" 0.250000'


@pytest.mark.parametrize("host, name", [("127.0.0.1:8998", "127.0.0.1"), ("[::1]:8998", "::1"), ("::1", "::1"),
                                        ("localhost", "localhost"), ("[::1]", "::1"), ("", ""),
                                        ("[::1]]:1", "::1")])
def test_hostname_drops_the_port(host, name):
    assert _hostname(host) == name


@pytest.mark.parametrize("settings, headers, refused", [
    (LOOPBACK, {"Host": "127.0.0.1:8998"}, None),
    (LOOPBACK, {"Host": "LOCALHOST:8998"}, None),
    (LOOPBACK, {"Host": "127.0.0.2"}, None),
    (LOOPBACK, {"Host": "[::1]:1"}, None),
    (LOOPBACK, {"Host": "attacker.example"}, "--allow-host"),
    (LOOPBACK, {}, "--allow-host"),
    (Settings(allowed_hosts=("chat.example",)), {"Host": "chat.example:443"}, None),
    (Settings(allowed_hosts=("chat.example",)), {"Host": "other.example"}, "--allow-host"),
    (Settings(allowed_hosts=("*",)), {"Host": "any.example"}, None),
    (EXPOSED, {"Host": "any.example"}, None),  # beyond loopback the token guards, not the name
    (Settings(host="0.0.0.0", token="t", allowed_hosts=("a.example",)), {"Host": "b.example"}, "--allow-host"),
    (LOOPBACK, {"Host": "127.0.0.1:8998", "Origin": "http://127.0.0.1:8998"}, None),
    (LOOPBACK, {"Host": "127.0.0.1:8998", "Origin": "HTTP://127.0.0.1:8998"}, None),
    (LOOPBACK, {"Host": "localhost:8998", "Origin": "http://LocalHost:8998"}, None),  # names compare in any case
    (LOOPBACK, {"Host": "LocalHost:8998", "Origin": "http://localhost:8998"}, None),
    (LOOPBACK, {"Host": "localhost:8998", "Origin": "localhost:8998"}, "may not"),  # no scheme: not an origin
    (LOOPBACK, {"Host": "127.0.0.1:8998", "Origin": "http://127.0.0.1:9999"}, "--allow-origin http://127.0.0.1:9999"),
    (LOOPBACK, {"Host": "127.0.0.1:8998", "Origin": "null"}, "--allow-origin null"),
    (Settings(allowed_origins=("https://app.example",)), {"Host": "localhost", "Origin": "https://app.example"}, None),
    (Settings(allowed_origins=("https://app.example",)), {"Host": "localhost", "Origin": "https://b.example"}, "may not"),
    (Settings(allowed_origins=("*",)), {"Host": "localhost", "Origin": "https://b.example"}, None),
])
def test_foreign_request(settings, headers, refused):
    reason = foreign_request(settings, headers)
    assert reason is None if refused is None else refused in reason


def test_the_refusals_say_what_to_do():
    assert foreign_request(LOOPBACK, {}) == (
        "Host '' is not this server's name: a loopback server answers loopback names only (DNS rebinding); "
        "behind a proxy, start it with --allow-host <public name>")
    assert foreign_request(LOOPBACK, {"Host": "localhost", "Origin": "https://x.example"}) == (
        "pages from 'https://x.example' may not use this server; to allow them, start it with "
        "--allow-origin https://x.example")
    assert access_denied(EXPOSED, {}, {}) == (
        "an access token is required: send 'Authorization: Bearer <token>' or ?token=<token>")


def test_presented_token_prefers_the_bearer_header():
    assert presented_token({"Authorization": "Bearer abc "}, {"token": "q"}) == "abc"
    assert presented_token({"Authorization": "bearer abc"}, {}) == "abc"
    assert presented_token({"Authorization": "Basic abc"}, {"token": "q"}) == "q"
    assert presented_token({}, {}) == ""


def test_access_denied_and_details():
    assert access_denied(LOOPBACK, {}, {}) is None
    assert "required" in access_denied(EXPOSED, {}, {})
    assert access_denied(EXPOSED, {}, {"token": "s3cret"}) is None
    assert access_denied(EXPOSED, {"Authorization": "Bearer s3cret"}, {}) is None
    for wrong in ("s3cre", "s3cret!", "\udcff\udcfe", "é"):
        assert access_denied(EXPOSED, {}, {"token": wrong}) == "wrong access token"
    assert details_allowed(LOOPBACK, {}, {})
    assert not details_allowed(EXPOSED, {}, {}) and not details_allowed(EXPOSED, {}, {"token": "x"})
    assert details_allowed(EXPOSED, {}, {"token": "s3cret"})
    assert not details_allowed(Settings(host="0.0.0.0", insecure=True), {}, {})  # no token: no details


# ---- protocol.py ----------------------------------------------------------------------------------
def _reference_crc(page: bytes) -> int:
    crc = 0
    for i, byte in enumerate(page):
        crc ^= (0 if 22 <= i < 26 else byte) << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def test_ogg_crc_equals_the_bitwise_definition():
    rng = np.random.default_rng(0)
    for n in (27, 28, 64, 300, 1000):
        page = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert ogg_crc(page) == _reference_crc(page)


@pytest.fixture(scope="module")
def page() -> bytes:
    writer = sphn.OpusStreamWriter(24_000)
    writer.append_pcm(np.zeros(1920, np.float32))
    pages = writer.append_pcm(np.full(1920, 0.1, np.float32))  # data pages, after the headers
    segments = pages[26]
    return pages[:27 + segments + sum(pages[27:27 + segments])]  # the first of them


def _kind(data: bytes) -> str | None:
    try:
        check_ogg_pages(data)
    except ProtocolError as err:
        return err.kind
    return None


def test_check_ogg_pages_names_each_fault(page):
    assert _kind(page) is None and _kind(page + page) is None and _kind(b"") is None
    assert _kind(page[:26]) == "truncated_audio"  # inside the header
    assert _kind(page[:27]) == "truncated_audio"  # the segment table is missing
    assert _kind(page[:-1]) == "truncated_audio"  # the body is short
    assert _kind(page + page[:5]) == "truncated_audio"
    assert _kind(b"OggT" + page[4:]) == "not_ogg"
    assert _kind(page[:4] + b"\x01" + page[5:]) == "not_ogg"  # version 1
    assert _kind(page[:-1] + bytes([page[-1] ^ 0x80])) == "bad_crc"
    assert _kind(page[:22] + bytes([page[22] ^ 1]) + page[23:]) == "bad_crc"  # the CRC field itself


def _message(data: bytes) -> str:
    with pytest.raises(ProtocolError) as caught:
        check_ogg_pages(data)
    return str(caught.value)


def test_a_page_with_no_segments_is_whole(page):
    empty = ogg_page_bytes(b"OggS" + bytes(22) + b"\x00")  # 27 bytes: a header and an empty segment table
    assert _kind(empty) is None and _kind(empty + page) is None
    assert _kind(empty[:26]) == "truncated_audio"


def ogg_page_bytes(header: bytes) -> bytes:
    """`header` with its CRC field filled in."""
    return header[:22] + ogg_crc(header).to_bytes(4, "little") + header[26:]


def test_the_framing_errors_say_where_and_what_to_do(page):
    n = len(page)
    assert _message(page + page[:10]) == (
        f"audio ends inside an Ogg page header at byte {n}: send whole Ogg/Opus pages "
        "(sphn.OpusStreamWriter output) after the 0x01 byte")
    assert _message(page + b"ID3" + page[3:]) == (
        f"audio at byte {n} is not an Ogg page (no 'OggS'): encode 24 kHz mono PCM with Ogg/Opus (sphn.OpusStreamWriter)")
    assert _message(page + page[:-3]) == (
        f"the Ogg page at byte {n} is truncated ({n - 3} of {n} bytes): send whole pages")
    assert _message(page + page[:-1] + bytes([page[-1] ^ 1])) == (
        f"the Ogg page at byte {n} fails its CRC check: it was corrupted on the way; "
        "send the pages as the encoder wrote them")
    for message, text in (
            ("x", "text frames are not part of the protocol: send binary messages whose first byte is 0x01 "
                  "followed by Ogg/Opus audio"),
            (b"", "empty message: send 0x01 followed by Ogg/Opus audio"),
            (b"\x01", "audio message without audio: append Ogg/Opus pages after the 0x01 byte"),
            (b"\x00", "message kind 0x00 (handshake) is not accepted from a client: send 0x01 followed by "
                       "Ogg/Opus audio")):
        with pytest.raises(ProtocolError) as caught:
            audio_payload(message)
        assert str(caught.value) == text


def test_audio_payload_and_messages(page):
    assert audio_payload(b"\x01" + page) == page and audio_payload(bytearray(b"\x01" + page)) == page
    for message, kind, words in (("x", "text_frame", "text frames"), (b"", "empty", "empty message"),
                                 (b"\x01", "empty", "without audio"), (b"\x00", "unknown_kind", "0x00 (handshake)"),
                                 (b"\x05", "unknown_kind", "0x05 (error)"), (b"\x07", "unknown_kind", "0x07 (unknown)")):
        with pytest.raises(ProtocolError, match=words.replace("(", r"\(").replace(")", r"\)")) as caught:
            audio_payload(message)
        assert caught.value.kind == kind
    assert error_message("é") == b"\x05\xc3\xa9" and text_message("hi") == b"\x02hi" and audio_message(b"O") == b"\x01O"


# ---- jitter.py ------------------------------------------------------------------------------------
def frame(seq: int, n: int = 4) -> np.ndarray:
    return np.full(n, seq + 1, np.float32)


def test_check_seq():
    assert check_seq(None) is None and check_seq(np.int64(7)) == 7 and type(check_seq(np.int64(7))) is int
    for bad in (True, 1.5, "3", float("nan")):
        with pytest.raises(AudioFormatError, match="seq must be an int"):
            check_seq(bad)


@pytest.mark.parametrize("window, max_gap, max_conceal", [(0, 50, 3), (3, 3, 3), (3, 50, -1)])
def test_jitter_settings_are_checked(window, max_gap, max_conceal):
    with pytest.raises(ConfigError) as caught:
        JitterBuffer(window, max_gap, max_conceal)
    assert str(caught.value) == (f"need window >= 1, max_gap > window and max_conceal >= 0, got window={window}, "
                                 f"max_gap={max_gap}, max_conceal={max_conceal}")


def test_jitter_smallest_settings_work():
    jb = JitterBuffer(1, 2, 0)
    out = jb.push(0, frame(0)) + jb.push(2, frame(2))  # gap of 1, no credit: skipped
    assert [r.seq for r in out] == [0, 2] and jb.counts.skipped == 1 and jb.counts.concealed == 0


def test_unnumbered_frames_pass_in_arrival_order():
    jb = JitterBuffer()
    out = jb.push(None, frame(5)) + jb.push(None, frame(1))
    assert [(r.seq, r.audio[0]) for r in out] == [(None, 6), (None, 2)] and jb.counts.consumed == 2


def test_duplicates_of_held_and_released_frames_and_late_ones_are_logged():
    said = []
    jb = JitterBuffer(window=2, log=lambda kind, detail: said.append((kind, detail)))
    jb.push(0, frame(0)), jb.push(2, frame(2)), jb.push(2, frame(2))  # 2 twice while held
    jb.push(0, frame(0))  # 0 again after release
    jb.push(3, frame(3))  # two held: 1 is concealed
    jb.push(1, frame(1))  # too late
    c = jb.counts
    assert (c.duplicate, c.late, c.concealed, c.dropped) == (2, 1, 1, 3) and jb.held == 0
    assert said == [("duplicate", "seq 2 arrived twice: dropped"), ("duplicate", "seq 0 arrived twice: dropped"),
                    ("concealed", "seq 1 lost: 4 samples of silence in its place"),
                    ("late", "seq 1 arrived after its slot was concealed or skipped: dropped")]


def test_skips_and_restarts_are_logged_with_what_was_lost():
    said = []
    jb = JitterBuffer(window=1, max_gap=10, max_conceal=1, log=lambda kind, detail: said.append((kind, detail)))
    jb.push(0, frame(0)), jb.push(5, frame(5)), jb.push(30, frame(30))
    assert said == [("skipped", "seqs 1..4 lost: 4 frames, more than the 1 that may be concealed now; "
                                "the stream resumes at 5"),
                    ("restart", "seq jumped from 6 to 30: the sender restarted; released what was held")]


@pytest.mark.parametrize("before, after", [(10, 6), (6, 10)])
def test_a_concealed_frame_is_as_long_as_its_shorter_neighbour_and_silent(before, after):
    jb = JitterBuffer(window=1)
    jb.push(0, frame(0, before))
    concealed, real = jb.push(2, frame(2, after))
    assert concealed.concealed and concealed.seq == 1 and len(concealed.audio) == 6
    assert concealed.audio.dtype == np.float32 and not concealed.audio.any() and not real.concealed


def test_concealment_credit_is_earned_one_frame_per_frame_and_capped():
    jb = JitterBuffer(window=1, max_gap=50, max_conceal=2)
    jb.push(0, frame(0))
    jb.push(3, frame(3))  # gap of 2 = the credit: concealed
    assert (jb.counts.concealed, jb.counts.skipped) == (2, 0)
    jb.push(5, frame(5))  # one frame consumed since: credit 1, gap 1
    assert (jb.counts.concealed, jb.counts.skipped) == (3, 0)
    for seq in range(6, 12):  # plenty consumed: the credit is still capped at 2
        jb.push(seq, frame(seq))
    jb.push(15, frame(15))  # gap of 3 > 2: skipped, not concealed
    assert (jb.counts.concealed, jb.counts.skipped) == (3, 3)
    assert jb.push(13, frame(13)) == [] and jb.counts.late == 1  # a skipped frame that turns up is late


def test_a_jump_beyond_max_gap_either_way_is_a_restart_and_max_gap_itself_is_not():
    jb = JitterBuffer(window=3, max_gap=10, max_conceal=20)
    jb.push(0, frame(0))
    jb.push(11, frame(11))  # exactly max_gap beyond the next expected (1): held, no restart
    assert jb.counts.restarts == 0 and jb.held == 1
    out = jb.push(25, frame(25))  # beyond: what is held is released, gaps concealed
    assert jb.counts.restarts == 1 and [r.seq for r in out] == list(range(1, 12)) + [25]
    out = jb.push(5, frame(5))  # backwards beyond max_gap: another restart
    assert jb.counts.restarts == 2 and [r.seq for r in out] == [5]


def test_flush_conceals_between_held_frames_and_restart_forgets_the_numbering():
    jb = JitterBuffer(window=5)
    jb.push(0, frame(0)), jb.push(2, frame(2)), jb.push(4, frame(4))
    out = jb.flush()
    assert [(r.seq, r.concealed) for r in out] == [(1, True), (2, False), (3, True), (4, False)]
    assert jb.restart() == [] and jb.held == 0
    assert [r.seq for r in jb.push(2, frame(2))] == [2] and jb.counts.duplicate == 0  # a new source may reuse 2


def test_old_numbers_are_forgotten_after_two_max_gaps_of_releases():
    """Duplicates are recognised among the last 2 * max_gap frames released: memory stays bounded,
    and a sender that restarts its numbering long after may reuse old numbers."""
    jb = JitterBuffer(window=1, max_gap=10)
    for seq in [*range(5), *range(100, 125)]:  # 5 + 25 releases, a restart between
        jb.push(seq, frame(seq))
    assert [r.seq for r in jb.push(3, frame(3))] == [3] and jb.counts.duplicate == 0
    recent = JitterBuffer(window=1, max_gap=10)
    for seq in [*range(5), *range(100, 110)]:
        recent.push(seq, frame(seq))
    assert recent.push(3, frame(3)) == [] and recent.counts.duplicate == 1


def test_jitter_counts_dropped_is_duplicate_plus_late():
    assert JitterCounts(duplicate=2, late=3).dropped == 5
