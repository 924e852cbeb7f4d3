"""CSM's context cache (`csmlab.csm.cache`): each context turn is encoded by Mimi once, and the frames
are the uncached path's, code for code.

The uncached path is transformers' own: `generate_codes()` runs `model.generate()`, whose `forward()`
encodes every context turn again. The cached path is `frames()` (our loop), which embeds the prompt
from `CsmVoice.context_codes`. The same encode of the same samples gives the same codes, so the
comparison is exact, greedy and sampled (same seed). On the small offline CSM (random weights).
"""
import functools

import numpy as np
import pytest
import torch

from csmlab import csm
from csmlab.data import real_recording

TEXT = "so what do you think"
FRAMES = 3


@pytest.fixture()
def encodes(voice, monkeypatch):
    """The turns' lengths (samples) that CSM's Mimi encoded, in order, from a cleared cache on."""
    codec, seen = voice.model.codec_model, []
    encode = codec.encode

    def counted(audio, *args, **kwargs):
        seen.append(audio.shape[-1])
        return encode(audio, *args, **kwargs)

    monkeypatch.setattr(codec, "encode", counted)
    voice.context_codes.clear()
    yield seen
    voice.context_codes.clear()


@pytest.fixture(scope="module")
def turns():
    """Three turns of the real call (about 2.5 s), as CSM context."""
    return csm.conversation_context(real_recording(csm.SAMPLE_RATE), 2.0)[:3]


def uncached(voice, context, sampling, seed=0):
    torch.manual_seed(seed)
    return voice.generate_codes(TEXT, 1, context, FRAMES * csm.FRAME_MS, sampling)


def cached(voice, context, sampling, seed=0):
    torch.manual_seed(seed)
    return torch.stack(list(voice.frames(TEXT, 1, context, FRAMES * csm.FRAME_MS, sampling)))


def test_embedding_from_cached_codes_is_transformers_merge(voice, turns):
    inputs = voice.prompt(TEXT, 1, turns)
    with torch.inference_mode():
        theirs = voice.model._merge_input_ids_with_input_values(
            inputs["input_ids"], inputs["input_values"], inputs["input_values_cutoffs"])["inputs_embeds"]
        voice.embed_prompt(inputs, turns)  # fills the cache
        assert torch.equal(voice.embed_prompt(inputs, turns), theirs)  # from the cache: bit for bit


@pytest.mark.parametrize("sampling", [csm.Sampling(greedy=True), csm.Sampling()], ids=["greedy", "sampled"])
def test_cached_frames_are_the_uncached_frames(voice, turns, encodes, sampling):
    context = turns[:2]
    expected = uncached(voice, context, sampling)
    assert len(encodes) == len(context)  # transformers' forward encodes every turn
    first = cached(voice, context, sampling)  # encodes and fills the cache
    again = cached(voice, context, sampling)  # every turn from the cache
    assert torch.equal(first, expected) and torch.equal(again, expected)
    assert len(encodes) == 2 * len(context)  # the cached path encoded each turn once, then none
    assert (voice.context_codes.encoded, voice.context_codes.reused) == (len(context), len(context))


def test_each_turn_is_encoded_once_and_a_replaced_turn_again(voice, turns, encodes):
    greedy = csm.Sampling(greedy=True)
    a, b, c = turns
    cached(voice, [a, b], greedy)
    assert encodes == [len(a.audio), len(b.audio)]
    cached(voice, [a, b, c], greedy)  # the conversation grew by one turn: only that one is encoded
    assert encodes[2:] == [len(c.audio)]
    cached(voice, [b, c], greedy)  # the oldest turn left the window: nothing to encode
    assert len(encodes) == 3
    # The last turn replaced (as a brain merges a speaker's consecutive phrases into one turn): a new
    # Segment, with other audio at the same place, is encoded anew and gives the uncached frames.
    grown = csm.Segment(c.speaker, c.text + " and more", np.concatenate([c.audio, a.audio]), c.sample_rate)
    frames = cached(voice, [b, grown], greedy)
    assert encodes[3:] == [len(grown.audio)]
    assert torch.equal(frames, uncached(voice, [b, grown], greedy))
    # Even the same samples in a new Segment are encoded anew: the cache knows turns by identity.
    same = csm.Segment(b.speaker, b.text, b.audio.copy(), b.sample_rate)
    cached(voice, [same, grown], greedy)
    assert encodes[6:] == [len(b.audio)]  # (the uncached reference above encoded its 2 turns itself)


# ---- the backbone's KV cache across prompts (`CsmVoice.prompt_prefix`) ---------------------------------

@pytest.fixture()
def prefilled(voice, monkeypatch):
    """Per call of `frames()`: the positions the backbone prefilled (the prompt's part not reused)."""
    model, seen = voice.model, []
    forward = model.forward

    @functools.wraps(forward)  # generate() checks its kwargs against forward's signature
    def counted(*args, **kwargs):
        if kwargs.get("inputs_embeds") is not None:
            seen.append(kwargs["inputs_embeds"].shape[1])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counted)
    voice.prompt_prefix.clear()
    yield seen
    voice.prompt_prefix.clear()


def positions(voice, context) -> int:
    return voice.prompt(TEXT, 1, context)["input_ids"].shape[1]


def audio_starts(voice, context) -> list[int]:
    """Where each context turn's audio frames begin in the prompt."""
    ids = voice.prompt(TEXT, 1, context)["input_ids"][0]
    audio = (ids == voice.config.audio_token_id).int()
    return (torch.diff(audio, prepend=torch.zeros(1, dtype=audio.dtype)) == 1).nonzero()[:, 0].tolist()


def test_an_appended_turn_is_all_the_backbone_prefills(voice, turns, prefilled):
    greedy = csm.Sampling(greedy=True)
    a, b, c = turns
    expected = uncached(voice, [a, b], greedy), uncached(voice, [a, b, c], greedy)
    prefilled.clear()
    assert torch.equal(cached(voice, [a, b], greedy), expected[0])
    assert prefilled == [positions(voice, [a, b])]  # the first prompt: all of it
    assert torch.equal(cached(voice, [a, b, c], greedy), expected[1])
    assert voice.prompt_prefix.kept > audio_starts(voice, [a, b, c])[1]  # turns a and b reused, audio and all
    assert prefilled[1] == positions(voice, [a, b, c]) - voice.prompt_prefix.kept  # only the rest prefilled


@pytest.mark.parametrize("sampling", [csm.Sampling(greedy=True), csm.Sampling()], ids=["greedy", "sampled"])
def test_a_context_changed_otherwise_is_prefilled_from_the_change(voice, turns, prefilled, sampling):
    a, b, c = turns
    other = csm.Segment(b.speaker, b.text, b.audio[::-1].copy(), b.sample_rate)  # the middle turn replaced
    expected = uncached(voice, [b, c], sampling, seed=1), uncached(voice, [a, other, c], sampling, seed=2)
    prefilled.clear()
    cached(voice, [a, b, c], sampling)
    assert torch.equal(cached(voice, [b, c], sampling, seed=1), expected[0])
    assert voice.prompt_prefix.kept < audio_starts(voice, [b, c])[0]  # oldest turn gone: at most a turn's header kept
    assert prefilled[-1] == positions(voice, [b, c]) - voice.prompt_prefix.kept
    cached(voice, [a, b, c], sampling)
    assert torch.equal(cached(voice, [a, other, c], sampling, seed=2), expected[1])
    kept, starts = voice.prompt_prefix.kept, audio_starts(voice, [a, other, c])
    assert starts[1] >= kept > starts[0]  # turn a and b's words kept, nothing of b's audio on
    assert prefilled[-1] == positions(voice, [a, other, c]) - kept


@torch.inference_mode()
def test_a_reused_prefix_gives_the_whole_prefill_s_logits_to_rounding(voice, turns):
    """Two pieces sum in another order than one: the logits agree to float rounding, not bit for bit."""
    a, b, c = turns
    inputs = voice.prompt(TEXT, 1, [a, b, c])
    embeds = voice.embed_prompt(inputs, [a, b, c])
    length, cut = embeds.shape[1], embeds.shape[1] // 2

    def prefill(start, end, past=None):
        return voice.model(inputs_embeds=embeds[:, start:end], attention_mask=inputs["attention_mask"][:, :end],
                           past_key_values=past, use_cache=True, logits_to_keep=1, cache_position=torch.arange(start, end))

    whole = prefill(0, length).logits
    parts = prefill(cut, length, prefill(0, cut).past_key_values).logits
    assert torch.allclose(whole, parts, rtol=0, atol=1e-4)
