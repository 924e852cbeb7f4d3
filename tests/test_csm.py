"""CSM as a streaming voice, on the small offline CSM (real structure, random weights, real Mimi format).

- streaming is token-exact: `stream()`'s frames (our loop, and generate() behind a streamer) are
  the codes `model.generate()` returns, greedy and (same seed) sampled;
- streamed audio (moshi's streaming Mimi) is the whole-utterance audio (CSM's transformers Mimi);
- CSM's Mimi and moshi's Mimi give the same codes, beyond 10 s too (sliding-window fix);
- the prompt has Sesame's layout; bad prompts and bad codes get clear CsmlabErrors.
"""
import threading

import numpy as np
import pytest
import torch

from csmlab import csm
from csmlab.weights.convert import fix_sliding_window, sliding_window_fixed
from csmlab.data import real_recording
from csmlab.errors import AudioFormatError, CodesError, CsmlabError, PromptTooLongError
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE, snr

TEXT = "Oh, hello. I didn't know you were there."
GREEDY = csm.Sampling(greedy=True)
FRAMES = 6


@pytest.fixture(scope="module")
def recording():
    return real_recording(SAMPLE_RATE)


@pytest.fixture(scope="module")
def reference(voice):
    """`model.generate()`'s greedy codes for TEXT: the reference every streaming path must hit."""
    return voice.generate_codes(TEXT, max_audio_ms=FRAMES * csm.FRAME_MS, sampling=GREEDY)


def test_offline_checkpoint_has_the_released_layout(voice):
    from transformers import AutoTokenizer

    from csmlab.weights.offline.csm import NUM_SPECIAL, SPECIALS

    if voice.source.is_real:
        pytest.skip("checks the offline stand-in")
    tok = AutoTokenizer.from_pretrained(voice.source.path)
    first = len(tok) - NUM_SPECIAL  # as Llama-3: regular tokens, then 256 specials
    assert tok.convert_tokens_to_ids(SPECIALS) == list(range(first, first + len(SPECIALS)))
    cfg = voice.config
    assert (cfg.bos_token_id, cfg.audio_token_id, cfg.audio_eos_token_id) == (first, first + 2, first + 3)
    assert cfg.text_vocab_size == len(tok)
    ids = tok("Hello?").input_ids
    assert ids[0] == first and ids[-1] == first + 1  # <|begin_of_text|> ... <|end_of_text|>
    assert (cfg.num_codebooks, cfg.vocab_size, cfg.max_position_embeddings) == (32, 2051, 2048)
    assert cfg.codec_config.num_quantizers == 32
    assert type(voice.processor).__name__ == "CsmProcessor"


@pytest.mark.parametrize("method", ["loop", "streamer"])
def test_stream_frames_are_generate_codes_greedy(voice, reference, method):
    frames = list(voice.frames(TEXT, max_audio_ms=FRAMES * csm.FRAME_MS, sampling=GREEDY, method=method))
    assert reference.shape == (FRAMES, 32)
    assert torch.equal(torch.stack(frames), reference)


def test_stopping_a_streamer_stream_early_cancels_generation(voice, reference):
    frames = voice.frames(TEXT, max_audio_ms=100 * csm.FRAME_MS, sampling=GREEDY, method="streamer")
    first = [next(frames) for _ in range(2)]
    frames.close()  # the generation thread stops at its next frame instead of running 100 frames
    assert torch.equal(torch.stack(first), reference[:2])
    assert not any(t.name == "csm-generate" and t.is_alive() for t in threading.enumerate())


def test_sampled_stream_with_same_seed_is_generate(voice):
    torch.manual_seed(7)
    expected = voice.generate_codes(TEXT, max_audio_ms=4 * csm.FRAME_MS)
    torch.manual_seed(7)
    frames = torch.stack(list(voice.frames(TEXT, max_audio_ms=4 * csm.FRAME_MS)))
    torch.manual_seed(8)
    other = voice.generate_codes(TEXT, max_audio_ms=4 * csm.FRAME_MS)
    assert torch.equal(frames, expected)
    assert not torch.equal(other, expected)  # sampling does depend on the seed


def test_stream_yields_one_frame_of_audio_per_step_equal_to_whole_decode(voice, reference):
    chunks = list(voice.stream(TEXT, max_audio_ms=FRAMES * csm.FRAME_MS, sampling=GREEDY))
    assert [c.shape for c in chunks] == [(FRAME_SIZE,)] * FRAMES
    whole = voice.decode(reference, layout="TK")  # transformers' Mimi, all frames at once
    assert snr(whole, np.concatenate(chunks)) > 60  # streaming moshi Mimi == batch transformers Mimi


def test_generate_with_context_streams_token_exactly(voice, recording):
    context = csm.conversation_context(recording, 3.0)
    expected = voice.generate_codes(TEXT, speaker=1, context=context, max_audio_ms=3 * csm.FRAME_MS, sampling=GREEDY)
    frames = voice.frames(TEXT, speaker=1, context=context, max_audio_ms=3 * csm.FRAME_MS, sampling=GREEDY)
    assert torch.equal(torch.stack(list(frames)), expected)


def test_prompt_has_sesame_layout(voice, recording):
    context = csm.conversation_context(recording, 2.0)
    inputs = voice.prompt(TEXT, speaker=1, context=context)
    tok = voice.processor.tokenizer
    ids = inputs["input_ids"][0].tolist()
    cfg = voice.config
    assert ids.count(cfg.bos_token_id) == len(context) + 1  # one <|begin_of_text|> per turn
    assert ids.count(cfg.audio_eos_token_id) == len(context)  # one end-of-audio frame per context turn
    frames = sum(-(-len(s.audio) // FRAME_SIZE) for s in context)  # ceil: Mimi pads the last frame
    assert ids.count(cfg.audio_token_id) == frames
    last_turn = tok.decode(ids[len(ids) - ids[::-1].index(cfg.bos_token_id) - 1:])
    assert last_turn == f"<|begin_of_text|>[1]{TEXT}<|end_of_text|>"
    assert "<|AUDIO|>x" in voice.describe(inputs)


@pytest.fixture(scope="module")
def long_codes(voice, recording):
    """14 s of the call encoded by CSM's Mimi (window fix on, then off) and by moshi's Mimi."""
    audio = torch.from_numpy(recording.audio[: 14 * SAMPLE_RATE])[None, None]  # [1, 1, T]
    assert sliding_window_fixed()  # load_csm applied it
    with torch.no_grad():
        fixed = voice.model.codec_model.encode(audio).audio_codes  # [1, 32, 175]
        try:
            fix_sliding_window(False)
            unfixed = voice.model.codec_model.encode(audio).audio_codes
        finally:
            fix_sliding_window(True)
        return fixed, unfixed, torch.from_numpy(voice.codec().encode(audio[0, 0].numpy(), SAMPLE_RATE))[None]


def test_csm_mimi_codes_match_moshi_mimi_beyond_10_s(long_codes):
    theirs, _, ours = long_codes
    assert theirs.shape == ours.shape == (1, 32, 175)
    assert torch.equal(theirs[:, :8], ours[:, :8])  # what Moshi uses: identical
    assert (theirs == ours).float().mean() > 0.99  # all 32: equal up to float near-ties


def test_without_the_window_fix_codes_drift_after_10_s(long_codes):
    fixed, unfixed, _ = long_codes
    early = 10 * 25 // 2  # frames of the first 10 s see < 250 transformer steps (25 Hz): untouched
    assert torch.equal(unfixed[..., :early], fixed[..., :early])
    assert not torch.equal(unfixed[..., early:], fixed[..., early:])


def test_moshi_hears_first_8_codebooks(voice, reference):
    heard = csm.moshi_hears(voice, reference)  # moshi's Mimi with 8 codebooks
    assert heard.shape == (FRAMES * FRAME_SIZE,)
    assert snr(voice.decode(reference[:, :8], layout="TK"), heard) > 60  # == CSM's own Mimi fed 8 codebooks
    other_deep = reference.clone()
    other_deep[:, 8:] = torch.randint(0, 2048, other_deep[:, 8:].shape)
    assert np.array_equal(csm.moshi_hears(voice, other_deep), heard)  # codebooks 8..31 never reach Moshi
    with pytest.raises(CodesError):
        csm.moshi_hears(voice, reference[:, :4])


def test_prompt_too_long_says_by_how_much(voice, recording):
    context = [csm.Segment(0, "long", recording.audio)] * 6  # 6 x 30 s = 2250 frames > 2048
    with pytest.raises(PromptTooLongError, match=r"> CSM's context of 2048.*Drop \d+ positions"):
        voice.generate(TEXT, context=context)
    short = [csm.Segment(0, "hi", recording.audio[:SAMPLE_RATE])]
    with pytest.raises(PromptTooLongError):
        list(voice.stream(TEXT, context=short, max_audio_ms=200_000))


@pytest.mark.parametrize("segment, error", [
    (csm.Segment(0, "nan", np.full(4800, np.nan, dtype=np.float32)), AudioFormatError),
    (csm.Segment(0, "batched", np.zeros((1, 2, 4800), dtype=np.float32)), AudioFormatError),
    (csm.Segment(0, "no rate", np.zeros(4800, dtype=np.float32), sample_rate=0), AudioFormatError),
    (csm.Segment(0, "empty", np.zeros(0, dtype=np.float32)), AudioFormatError),
    (csm.Segment(-1, "who", np.zeros(4800, dtype=np.float32)), CsmlabError),
])
def test_bad_context_is_refused(voice, segment, error):
    with pytest.raises(error):
        voice.prompt(TEXT, context=[segment])


def test_bad_text_and_codes_are_refused(voice):
    with pytest.raises(CsmlabError):
        voice.prompt("   ")
    with pytest.raises(CodesError):
        voice.decode(torch.full((3, 32), 2049))  # a CSM special code: no Mimi entry
    with pytest.raises(CodesError):
        voice.decode(torch.zeros(3, 32))  # float codes
    with pytest.raises(CodesError):
        voice.decode(torch.zeros(3, 32, dtype=torch.bool))  # bool codes are no codes


def test_context_audio_follows_the_codec_rules(voice, recording):
    """int16 PCM is scaled and stereo averaged, exactly as csmlab.codec takes audio."""
    clip = recording.audio[: SAMPLE_RATE // 2]
    pcm = np.round(clip * 32767).astype(np.int16)
    as_float = voice.prompt(TEXT, context=[csm.Segment(0, "hi", pcm.astype(np.float32) / 32768)])
    as_int16 = voice.prompt(TEXT, context=[csm.Segment(0, "hi", pcm)])
    as_stereo = voice.prompt(TEXT, context=[csm.Segment(0, "hi", np.stack([pcm, pcm]))])
    for prompt in (as_int16, as_stereo):
        assert torch.equal(prompt["input_values"], as_float["input_values"])


def test_context_at_16_khz_is_resampled(voice, recording):
    at16 = real_recording(16000).audio[:16000]
    seg16 = csm.Segment(0, "hi", at16, sample_rate=16000)
    seg24 = csm.Segment(0, "hi", recording.audio[:SAMPLE_RATE])
    assert voice.prompt(TEXT, context=[seg16])["input_ids"].shape == voice.prompt(TEXT, context=[seg24])["input_ids"].shape
