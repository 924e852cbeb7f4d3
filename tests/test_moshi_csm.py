"""Moshi leads, CSM speaks (`csmlab.pipeline.moshi_csm`), over the whole real call.

Moshi is the REPLAY of Sheila's words (`ReplayedMoshi`: a real Moshi's text stream on this call
would look so); Diane is the user; CSM is the small offline model (random weights: its audio is a
buzz, its timing and bookkeeping real). One session runs the call once for the module.
"""
import numpy as np
import pytest
import torch

from csmlab.csm import Sampling
from csmlab.data import Recording, Turn, real_recording
from csmlab.metrics import FRAME_SIZE
from csmlab.pipeline import DuplexSession, make_brain
from csmlab.pipeline.call import user_side
from csmlab.pipeline.moshi_csm import PhrasePolicy
from csmlab.pipeline.replay import ReplayedMoshi, spread_words
from csmlab.pipeline.voices import CsmSpeaker

FRAME_MS = 80


@pytest.fixture(scope="module")
def small_voice(voice):
    return CsmSpeaker(voice, sampling=Sampling(greedy=True), context_s=2.0)


@pytest.fixture(scope="module")
def whole_call(small_voice):
    """The call with Diane as the user and the replay of Sheila as Moshi, plus 4 s of silence."""
    rec = real_recording()
    diane = user_side(rec, "Diane")
    brain = make_brain("moshi+csm", replay="Sheila", voice=small_voice, transcript=diane.transcript, ms_per_word=240)
    audio = np.concatenate([diane.audio, np.zeros(4 * rec.sample_rate, np.float32)])
    with DuplexSession(brain) as session:
        steps = list(session.run(audio, rec.sample_rate))
    return brain, steps, session, rec


def test_the_replay_talks_like_moshi_and_says_it_is_a_replay():
    rec = real_recording()
    replay = ReplayedMoshi(rec, "Sheila", delay=2)
    sheila = [t for t in rec.transcript if t.speaker == "Sheila"]
    steps = [replay.step(None) for _ in range(int(rec.seconds * 1000 / FRAME_MS))]
    words = [(s.index, s.lead_text) for s in steps if s.lead_text]
    assert " ".join(w.strip() for _, w in words) == " ".join(t.text for t in sheila)  # every word, in order, once
    for turn in sheila:  # each utterance's words fall inside its span
        inside = [w for i, w in words if turn.start * 1000 - FRAME_MS <= i * FRAME_MS <= turn.end * 1000]
        assert " ".join(w.strip() for w in inside).startswith(turn.text)
    assert [s.text for s in steps[2:]] == [s.lead_text for s in steps[:-2]]  # the aligned text, `delay` steps later
    assert all(s.warming_up for s in steps[:2]) and sum(bool(s.lead_text) for s in steps) < len(steps) / 4  # mostly padding
    assert "REPLAY" in repr(replay) and "NOT Moshi" in repr(replay)


def test_moshi_stream_lead_text_is_its_text_delay_steps_early(moshi):
    from csmlab.moshi import MoshiStream

    with MoshiStream(moshi, seed=3) as stream:
        steps = [stream.step(torch.zeros(moshi.num_user_codebooks, dtype=torch.long)) for _ in range(8)]
    d = stream.delay
    assert d >= 1 and [s.text for s in steps[d:]] == [s.lead_text for s in steps[:-d]]


def test_every_word_is_voiced_once_in_order_or_dropped_by_a_barge_in(whole_call):
    brain, steps, session, rec = whole_call
    said = [w.text.strip() for w in spread_words(rec, "Sheila")]
    assert [w for _, w, _ in brain.word_fates()] == said
    ids = [i for p in brain.phrases for i in p.word_ids]
    assert ids == list(range(len(said)))  # each word in exactly one phrase, in order
    barged = {t["step"] for t in brain.trace if t["barge_in"]}
    for p in brain.phrases:
        assert p.status in ("voiced", "cut", "dropped")
        assert p.status == "voiced" or p.end_step in barged  # cut or dropped only by a barge-in
        assert (p.frames > 0) == (p.status != "dropped")
    assert sum(p.status == "voiced" for p in brain.phrases) >= 5 and barged
    voiced = [s for s in steps if s.pcm.any()]
    assert len(voiced) == sum(p.frames for p in brain.phrases)  # nothing voiced twice, nothing else voiced
    assert [s.text for s in steps if s.text] == [p.text for p in brain.phrases if p.frames]


def test_barge_in_stops_the_voice_within_two_frames(whole_call):
    brain, steps, session, rec = whole_call
    word_steps = {w.step for w in spread_words(rec, "Sheila")}
    trace = {t["step"]: t for t in brain.trace}
    stops = 0
    for t in range(brain.yield_steps, len(steps) - 2):
        quiet = not word_steps & set(range(t - brain.yield_steps + 1, t + 1))  # Moshi gave the floor ...
        if quiet and trace[t]["user_speech"] and steps[t - 1].pcm.any():  # ... while the user speaks over the voice
            stops += 1
            until = min([w for w in word_steps if w > t] + [len(steps)])
            assert not any(s.pcm.any() for s in steps[t + 2: until]), f"still talking after step {t}"
    assert stops >= 2 and sum(p.status == "cut" for p in brain.phrases) >= 2  # the voice was cut, not at its end


def test_no_phrase_is_voiced_a_turn_late(whole_call):
    """No whole turn of the user lies between Moshi's words and their voice (MoshiPolicy's fault)."""
    brain, steps, session, rec = whole_call
    diane = [(t.start * 1000, t.end * 1000) for t in rec.transcript if t.speaker == "Diane"]
    started = [p for p in brain.phrases if p.start_step is not None]
    for p in started:
        said, voiced = p.first_word_step * FRAME_MS, p.start_step * FRAME_MS
        assert not [(a, b) for a, b in diane if said <= a and b <= voiced], p
    lags = brain.lags()
    assert lags["started"] == len(started) and lags["lag_ms"]["n"] == len(started)
    assert lags["lag_vs_moshi_voice_ms"]["p50"] == lags["lag_ms"]["p50"] - FRAME_MS  # Moshi's audio: 1 step after its text


def test_words_said_after_the_users_turn_are_voiced_in_that_turn(small_voice):
    """Moshi answers only after the user stops (as a real Moshi does): the answer comes before the user's next turn."""
    from csmlab.data import speech_utterances
    from csmlab.audio import to_mimi

    audio, rate, _ = speech_utterances()["weather_en-us_24k"]
    first = to_mimi(audio, rate)
    user = np.concatenate([np.zeros(4800, np.float32), first, np.zeros(3 * 24000, np.float32), first])
    end_s = (4800 + len(first)) / 24000
    answer = Recording(np.zeros(16000, np.float32), 16000, [], [Turn("Moshi", end_s + 0.3, end_s + 1.2, "Sunny, I think.")])
    from csmlab.codec import load_codec
    from csmlab.pipeline.moshi_csm import MoshiCsmBrain

    brain = MoshiCsmBrain(ReplayedMoshi(answer, "Moshi"), load_codec(8, listen=True), small_voice, policy="k2", ms_per_word=400)
    with DuplexSession(brain) as session:
        steps = list(session.run(user, 24000))
    second = (4800 + len(first) + 3 * 24000) // FRAME_SIZE
    assert [p.status for p in brain.phrases] == ["voiced", "voiced"]
    assert all(end_s * 1000 < p.start_step * FRAME_MS and p.end_step <= second for p in brain.phrases)
    assert brain.phrases[1].start_step == brain.phrases[0].end_step  # the second phrase joins the first: no gap
    assert all(s.pcm.any() for s in steps[brain.phrases[0].start_step: brain.phrases[1].end_step])


@pytest.mark.parametrize("spec, words, closes", [
    ("k2", ["a", "b"], True), ("k2", ["a"], False), ("punct", ["well,"], True), ("punct", ["well"], False),
    ("pause", ["a", "b", "c", "d"], False),
])
def test_phrase_policies(spec, words, closes):
    policy = PhrasePolicy.parse(spec)
    assert policy.name == spec and policy.closes(words, quiet_steps=1) is closes
    assert policy.closes(words, quiet_steps=policy.pause_steps)  # a pause closes every policy's phrase


def test_csmlab_serve_moshi_csm_answers_a_websocket_client(csmlab_serve, speech):
    """Offline: Moshi's random weights choose random words, CSM's random weights voice them. The server
    runs on the real-time clock, where a step over its 80 ms sends silence and keeps its text: on this
    CPU CSM's frames are late, so the answer that comes back is Moshi's words, with the voice's audio
    where a step kept up."""
    import asyncio

    from csmlab.serve.client import FRAME, converse

    server = csmlab_serve("--brain", "moshi+csm")
    talk = asyncio.run(converse(f"ws://127.0.0.1:{server.port}/api/chat", np.tile(speech, 2), realtime=False))
    server.stop()
    assert talk.errors == [] and len(talk.audio) == talk.frames_sent * FRAME  # one step out per step in
    assert all(notice.startswith(("ok:", "behind:", "overloaded:")) for notice in talk.notices)  # said, not silent
    assert talk.texts and all(text.strip() for text in talk.texts)  # the phrases CSM started to voice


def test_an_audio_only_context_turn_is_the_speaker_tag_then_its_frames(voice, speech):
    from csmlab.csm.voice import Segment

    inputs = voice.prompt("Hi.", 1, [Segment(0, "", speech, 16000)])
    shown = voice.describe(inputs)
    assert shown.startswith("<|begin_of_text|>[0]<|end_of_text|><|AUDIO|>x13 (1040 ms)")  # no words, 1 s of frames
    assert shown.endswith("<|begin_of_text|>[1]Hi.<|end_of_text|>")


def test_continuity_counts_joins_and_gaps_only_where_moshi_kept_talking():
    from csmlab.bench.moshi_csm import continuity
    from csmlab.pipeline.moshi_csm import Phrase

    def phrase(first, start, end, status="voiced"):
        return Phrase(0, [0], "w", first, first, start, end, 1, status=status)

    phrases = [phrase(0, 2, 10), phrase(5, 10, 14), phrase(12, 16, 20), phrase(30, 31, 35, "cut"), phrase(33, 36, 40)]
    out = continuity(phrases)  # 2nd joins the 1st; the 3rd waits 2 steps; the 4th follows Moshi's pause; the 5th a cut
    assert (out["joined"], out["gaps"], out["gap_ms"]["p50"]) == (1, 1, 160.0)
