"""Property-based tests (hypothesis): invariants that must hold for *any* input, not for a few picked ones.

- the jitter buffer accounts for every frame under random drop, duplicate, reorder and wrap-around;
- Ogg/Opus framing round-trips for any chunking, and any corruption of a page is refused;
- the server's wire and session end in the same state after valid and invalid messages as after the
  valid ones alone.

CI runs the "ci" profile (tests/conftest.py: a fixed, derandomized set, a few seconds); run more with
`pytest tests/test_properties.py --hypothesis-profile thorough`. A failure prints the example to
replay; no example database is kept.
"""
import numpy as np
import pytest
import sphn
from hypothesis import given
from hypothesis import strategies as st

from csmlab.errors import AudioFormatError, CsmlabError
from csmlab.pipeline import DuplexSession, ScriptedBrain, Utterance
from csmlab.pipeline.jitter import JitterBuffer
from csmlab.serve.protocol import ProtocolError, audio_payload, check_ogg_pages
from csmlab.serve.wires import FrameWire, OpusWire
from csmlab.widget.frames import KIND_MIC, pack_frame

RATE = 24_000
FRAME = 1920
WRAP = 1 << 16  # a 16-bit sender counter wraps from 65535 to 0


# ---- the jitter buffer ------------------------------------------------------------------------
@st.composite
def arrivals(draw):
    """A sender's frames as a network delivers them: some lost, some twice, reordered a little, and
    numbered from anywhere, possibly wrapping around a 16-bit counter."""
    n = draw(st.integers(1, 120))
    start = draw(st.one_of(st.integers(0, 1000), st.integers(WRAP - 60, WRAP - 1)))
    lost = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    twice = draw(st.lists(st.integers(0, 20), min_size=n, max_size=n))
    delay = draw(st.lists(st.floats(0, 4), min_size=n, max_size=n))
    sent = [i for i in range(n) if not lost[i]] or [0]
    copies = sent + [i for i in sent if twice[i] == 0]
    order = sorted(range(len(copies)), key=lambda k: (copies[k] + delay[copies[k]] + (k >= len(sent)) * 0.5, k))
    return [((start + copies[k]) % WRAP, copies[k]) for k in order]  # (seq on the wire, which frame)


@given(arrivals(), st.integers(1, 4), st.integers(0, 12))
def test_every_frame_is_consumed_concealed_dropped_or_held(seqs, window, max_conceal):
    jb = JitterBuffer(window=window, max_gap=50, max_conceal=max_conceal)
    out = [r for seq, frame in seqs for r in jb.push(seq, np.full(4 + frame % 3, frame + 1, np.float32))]
    c = jb.counts
    assert c.received == len(seqs) == c.consumed + c.duplicate + c.late + jb.held
    out += jb.flush()
    assert jb.held == 0 and len(out) == c.consumed + c.concealed
    real = [r for r in out if not r.concealed]
    assert len(real) == c.consumed and len({r.seq for r in real}) == c.consumed  # no frame twice
    for r in real:  # each is the sender's own frame, whole
        assert np.all(r.audio == r.audio[0]) and (int(r.audio[0]) - 1 + seqs[0][0] - seqs[0][1]) % WRAP == r.seq
    assert c.concealed <= max_conceal + c.consumed  # compute stays bounded by real input
    for a, b in zip(out, out[1:]):  # in order within a source; a wrap is a restart
        assert b.seq > a.seq or c.restarts
    if not c.restarts:
        assert out[-1].seq - out[0].seq + 1 == c.consumed + c.concealed + c.skipped  # no hole unaccounted


# ---- Ogg/Opus framing -----------------------------------------------------------------------
def _page_starts(data: bytes) -> set[int]:
    """Where each Ogg page of `data` begins, from the header's segment table (RFC 3533)."""
    starts, at = set(), 0
    while at < len(data):
        starts.add(at)
        segments = data[at + 26]
        at += 27 + segments + sum(data[at + 27:at + 27 + segments])
    return starts


chunkings = st.lists(st.integers(1, 4000), min_size=1, max_size=8)


@given(chunkings, st.integers(0, 2**32 - 1))
def test_opus_pages_round_trip_for_any_chunking_and_any_corruption_is_refused(sizes, where):
    rng = np.random.default_rng(sum(sizes))
    writer, reader = sphn.OpusStreamWriter(RATE), sphn.OpusStreamReader(RATE)
    messages = [writer.append_pcm((0.1 * rng.standard_normal(n)).astype(np.float32)) for n in sizes]
    messages = [m for m in messages if m]
    decoded = 0
    for m in messages:
        assert audio_payload(b"\x01" + m) == m  # whole pages, CRCs right
        decoded += len(reader.append_bytes(m))
    whole = sum(sizes) // 480 * 480  # whole 20 ms packets written
    assert whole - 480 <= decoded <= whole  # all come back but one the encoder may still hold
    if messages:
        page = messages[where % len(messages)]
        at, bit = where % len(page), 1 << (where >> 8) % 8
        with pytest.raises(ProtocolError):
            check_ogg_pages(page[:at] + bytes([page[at] ^ bit]) + page[at + 1:])
        inside = [i for i in range(1, len(page)) if i not in _page_starts(page)]
        with pytest.raises(ProtocolError):  # cut anywhere but between pages
            check_ogg_pages(page[:inside[where % len(inside)]])


# ---- the server's state: invalid messages change nothing ------------------------------------
def _invalid(opus_page: bytes):
    return st.one_of(
        st.binary(max_size=40),  # noise, an empty message, unknown kinds
        st.text(max_size=10),  # a text frame
        st.just(b"\x01" + opus_page[: len(opus_page) // 2]),  # a truncated page
        st.just(b"\x01" + opus_page[:-1] + bytes([opus_page[-1] ^ 1])),  # a corrupted one
    )


def _run(wire, messages) -> tuple[np.ndarray, dict]:
    """What `Chat` does with each message (decode, then push), without a network: the audio out and
    the session's frame counts. Refused messages are skipped, as the server answers them and goes on."""
    with DuplexSession(ScriptedBrain([Utterance(0, np.full(FRAME * 2, 0.2, np.float32), RATE, "hi")])) as session:
        steps = []
        for message in messages:
            try:
                pcm, seq = wire.decode(message)
                steps += session.push(pcm, RATE, seq) if pcm.size else []
            except (ProtocolError, AudioFormatError):
                continue
        steps += session.end()
        report = session.report()
    pcm = np.concatenate([s.pcm for s in steps]) if steps else np.zeros(0, np.float32)
    return pcm, report["frames"]


@given(st.data())
def test_frames_wire_state_after_valid_and_invalid_messages_equals_valid_alone(data):
    frames = [pack_frame(KIND_MIC, i, 0.0, np.full(FRAME, 0.01 * (i + 1), np.float32)) for i in range(4)]
    bad = st.one_of(_invalid(frames[0][:40]), st.builds(lambda s: pack_frame(KIND_MIC, 0, 0.0, s[:FRAME]),
                                                        st.just(np.full(FRAME, np.nan, np.float32))))
    mixed = []
    for frame in frames:
        mixed += data.draw(st.lists(bad, max_size=2)) + [frame]
    clean_pcm, clean_counts = _run(FrameWire(), frames)
    pcm, counts = _run(FrameWire(), mixed)
    assert np.array_equal(pcm, clean_pcm) and counts == clean_counts


@given(st.data())
def test_opus_wire_state_after_valid_and_invalid_messages_equals_valid_alone(data):
    writer = sphn.OpusStreamWriter(RATE)
    pages = [writer.append_pcm(np.full(FRAME, 0.05 * (i + 1), np.float32)) for i in range(3)]
    valid = [b"\x01" + p for p in pages]
    mixed = []
    for message in valid:
        mixed += data.draw(st.lists(_invalid(pages[1]), max_size=2)) + [message]
    clean_pcm, clean_counts = _run(OpusWire(), valid)
    pcm, counts = _run(OpusWire(), mixed)
    assert np.array_equal(pcm, clean_pcm) and counts == clean_counts


def test_the_invalid_messages_are_really_refused():
    """The properties above are empty if the 'invalid' strategy produced messages the wires accept."""
    page = sphn.OpusStreamWriter(RATE).append_pcm(np.zeros(FRAME, np.float32))
    for message in (b"", b"\x07x", "text", b"\x01" + page[: len(page) // 2], b"\x01" + page[:-1] + bytes([page[-1] ^ 1])):
        with pytest.raises(CsmlabError):
            OpusWire().decode(message)
