"""The pipeline's real brains on the small offline models: Moshi (full duplex) and the cascade."""
import numpy as np
import torch

from csmlab import moshi as M
from csmlab.pipeline import DuplexSession, MoshiBrain, make_brain


def test_moshi_brain_gives_the_same_tokens_as_moshi_stream_driven_directly(call, moshi):
    audio, rate = call
    clip = audio[2 * rate: 2 * rate + rate // 2]  # 0.5 s of the call: 7 steps (the last one zero-padded)
    brain = MoshiBrain(model=moshi, seed=7)
    with DuplexSession(brain) as session:
        steps = list(session.run(clip, rate))
        tokens = list(brain.tokens)
    with brain.codec().stream() as codec:
        codes = np.concatenate([codec.encode(clip, rate), codec.flush()], axis=1)  # [8, T]
    with M.MoshiStream(moshi, seed=7) as direct:
        expected = [direct.step(torch.from_numpy(codes[:, t])) for t in range(codes.shape[1])]
    assert tokens == [s.text_token for s in expected] and len(tokens) == len(steps)
    assert [s.text for s in steps] == [s.text for s in expected]
    warm = [s.warming_up for s in expected]
    assert [not s.pcm.any() for s in steps] == warm  # silence exactly while Moshi's acoustic codebooks lag
    with brain.codec().stream() as codec:  # Moshi's codes, decoded by the system codec session
        voiced = [codec.decode(s.audio.numpy()[:, None]) for s in expected if not s.warming_up]
    assert np.array_equal(np.concatenate([s.pcm for s in steps if s.pcm.any()]), np.concatenate(voiced))
    assert session.report()["latency_ms"]["algorithmic"] == {"frame": 80, "acoustic delay": 80}


def test_make_brain_shares_a_loaded_moshi(moshi):
    a, b = make_brain("moshi", model=moshi), make_brain("moshi", model=moshi, seed=1)
    assert a.model is b.model and a.stream is not b.stream and a.weights == moshi.source.kind


def test_moshi_brain_recovers_from_a_failed_step(call, moshi):
    audio, rate = call
    brain = MoshiBrain(model=moshi)
    with DuplexSession(brain) as session:
        brain.stream.step = lambda codes, real=brain.stream.step: (_ for _ in ()).throw(RuntimeError("boom"))
        first = session.push(audio[:1280], rate, seq=0) + session.push(audio[1280:2560], rate, seq=1)
        del brain.stream.step  # the instance's step again
        later = session.push(audio[2560:3840], rate, seq=2)
    assert [s.fault for s in first] == ["brain_error"] and [s.fault for s in later] == [None]
    assert session.events.count("moshi_reset") == 1 and brain.stream.index == 1


# ---- the cascade --------------------------------------------------------------------------------
LONG_REPLY = "This reply is long on purpose, so that the user can cut in while the system is still talking."


def speech(name: str) -> np.ndarray:
    from csmlab.audio import to_mimi
    from csmlab.data import speech_utterances

    audio, rate, _ = speech_utterances()[name]
    return to_mimi(audio, rate)  # [T] at 24 kHz


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 24000), np.float32)


def test_cascade_answers_after_the_hang_over_and_stops_within_two_frames_on_barge_in():
    from csmlab.pipeline import CascadeBrain
    from csmlab.pipeline.policies import ScriptedReplies

    first, second = speech("weather_en-us_24k"), speech("thanks_en+f3_24k")
    parts = [silence(0.3), first, silence(1.2), second, silence(1.0)]
    user = np.concatenate(parts)
    onset = len(np.concatenate(parts[:3])) + int(np.argmax(np.abs(second) > 0.02))  # the barge-in's first sound
    brain = CascadeBrain(voice="espeak", policy=ScriptedReplies([LONG_REPLY, "Short."]), end_silence_ms=240)
    with DuplexSession(brain) as session:
        steps = list(session.run(user, 24000))
        report = session.report()
    talking = [s.pcm.any() for s in steps]
    reply = talking.index(True)
    assert steps[reply].text == LONG_REPLY
    first_end = (len(parts[0]) + np.flatnonzero(np.abs(first) > 0.02)[-1]) / 24  # ms: the first utterance's last sound
    assert 240 <= reply * 80 + 80 - first_end <= 240 + 2 * 80 + 60  # hang-over + VAD and frame granularity
    onset_step = onset // 1920
    assert all(talking[reply:onset_step])  # still talking when the user cuts in ...
    assert not any(talking[onset_step + 2: onset_step + 6])  # ... and silent within 2 frames
    assert report["faults"] == {} and report["events"]["brain/barge_in"] == 1
    assert report["latency_ms"]["response"]["n"] == 2  # the second turn was answered too
    assert report["latency_ms"]["response"]["max"] < 240 + 3 * 80 + 500
    spoken = [seg for seg in brain.conversation]
    assert [seg.speaker for seg in spoken] == [0, 1, 0, 1]  # user, system (cut short), user, system
    assert len(spoken[1].audio) <= 1920 * (onset_step + 2 - reply)  # only what was said enters the conversation


def test_cascade_gives_the_voice_the_conversation_and_ignores_short_noises():
    from csmlab.pipeline import CascadeBrain
    from csmlab.pipeline.policies import ScriptedReplies

    heard = []

    class Recorder:  # a voice that keeps what it was given and says 3 frames of a tone
        weights = "test"

        def speak(self, text, context):
            heard.append((text, [(seg.speaker, seg.text, len(seg.audio)) for seg in context]))
            return iter([np.full(1920, 0.1, np.float32)] * 3)

    weather = speech("weather_en-us_24k")
    voiced = np.flatnonzero(np.abs(weather) > 0.02)[0]
    blip = weather[voiced: voiced + 2400]  # 100 ms of speech: shorter than a turn
    user = np.concatenate([silence(0.2), weather, silence(1.0), blip, silence(1.0), speech("thanks_en+f3_24k"), silence(1.0)])
    brain = CascadeBrain(voice=Recorder(), policy=ScriptedReplies(["one", "two"]), min_speech_ms=300)
    with DuplexSession(brain) as session:
        list(session.run(user, 24000))
    assert [text for text, _ in heard] == ["one", "two"] and session.events.count("ignored") == 1
    assert [s for s, _, _ in heard[1][1]] == [0, 1, 0]  # both sides' turns, in order, as context
    assert heard[1][1][1] == (1, "one", 3 * 1920)  # the system's own turn: its text and the audio it said
    assert heard[0][1][0][2] > 24000  # the user's turn carries its audio (> 1 s)


def test_cascade_speaks_with_csm_conditioned_on_the_conversation():
    from csmlab.csm import Sampling
    from csmlab.pipeline import CascadeBrain
    from csmlab.pipeline.policies import ScriptedReplies
    from csmlab.pipeline.voices import CsmSpeaker

    greedy = Sampling(greedy=True)
    voice = CsmSpeaker(max_audio_ms=240, sampling=greedy)  # the small offline CSM: random weights, real compute
    brain = CascadeBrain(voice=voice, policy=ScriptedReplies(["Hello there."]))
    with DuplexSession(brain) as session:
        steps = list(session.run(np.concatenate([speech("weather_en-us_24k"), silence(1.0)]), 24000))
    spoken = [s.pcm for s in steps if s.pcm.any()]
    user_turn, system_turn = brain.conversation
    expected = list(voice.voice.stream("Hello there.", 1, [user_turn], 240, greedy))  # CSM with the user's turn as context
    assert len(spoken) == len(expected) == 3
    assert all(np.array_equal(a, b) for a, b in zip(spoken, expected))
    assert system_turn.speaker == 1 and len(system_turn.audio) == 3 * 1920
