"""Where a phrase's first CSM frame goes: context encode (Mimi), prompt, backbone prefill, first frame.

    PYTHONPATH=$PWD CSMLAB_OFFLINE=1 python scripts/csm_phrase_start.py [--context 2 10 30] [--repeats 3] [--real-size]

The conversation is the real call's first turns (`conversation_context`), as `MoshiCsmBrain` gives
CSM its context; the phrase is a few words. Each part is timed alone, on one thread, `--repeats` times
(median), and the load is printed with the figures: on a shared machine they inflate with it.
Then the same phrase through `CsmVoice.frames()` twice: the first call encodes every segment, the
second finds them in the voice's context cache (`CsmVoice.context_codes`); a third appends a turn,
a fourth replaces the last turn by a longer one (`MoshiCsmBrain` joins a speaker's phrases so).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

TEXT = "so what do you think"


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median ms of `fn()` over `repeats` calls, and its last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), out


@torch.inference_mode()
def split(voice, context, repeats: int) -> dict:
    """The uncached path's parts, in the order `CsmVoice._loop` runs them."""
    from csmlab.csm import Sampling

    model, sampling = voice.model, Sampling(greedy=True)
    prompt_ms, inputs = timed(lambda: voice.prompt(TEXT, 1, context), repeats)
    cuts = torch.nn.functional.pad(inputs["input_values_cutoffs"][0], (1, 0))
    audio = inputs["input_values"][0]

    def encode():
        return [model.codec_model.encode(audio[..., a:b][None]).audio_codes for a, b in zip(cuts[:-1], cuts[1:])]

    encode_ms, _ = timed(encode, repeats)
    merge_ms, merged = timed(lambda: model._merge_input_ids_with_input_values(
        inputs["input_ids"], inputs["input_values"], inputs["input_values_cutoffs"]), repeats)
    if hasattr(voice, "embed_prompt"):  # the codes cached: the embedding alone
        voice.embed_prompt(inputs, context)
        embed_ms, _ = timed(lambda: voice.embed_prompt(inputs, context), repeats)
    else:  # before the cache: transformers' merge, less the encode timed above (noisy)
        embed_ms = merge_ms - encode_ms
    length = inputs["input_ids"].shape[1]

    def prefill():
        return model(inputs_embeds=merged["inputs_embeds"], attention_mask=inputs["attention_mask"], use_cache=True,
                     output_hidden_states=True, logits_to_keep=1, cache_position=torch.arange(length))

    prefill_ms, out = timed(prefill, repeats)
    first = sampling.pick(out.logits[:, -1].float())
    depth_ms, _ = timed(lambda: voice._depth(out.hidden_states[-1][:, -1], first, sampling), repeats)
    return {"context_s": round(sum(len(s.audio) / s.sample_rate for s in context), 2), "segments": len(context),
            "prompt_positions": length, "prompt_ms": round(prompt_ms, 1), "encode_ms": round(encode_ms, 1),
            "embed_ms": round(embed_ms, 1), "prefill_ms": round(prefill_ms, 1),
            "first_frame_depth_ms": round(depth_ms, 1)}


def first_frame(voice, context) -> float:
    """ms from `frames()` to its first frame, as `MoshiCsmBrain` starts a phrase."""
    from csmlab.csm import Sampling

    start = time.perf_counter()
    frames = voice.frames(TEXT, 1, context, 800, Sampling(greedy=True))
    next(frames)
    frames.close()
    return round(1000 * (time.perf_counter() - start), 1)


@torch.inference_mode()
def real_size_prefill(positions: list[int], repeats: int) -> dict:
    """The real CSM-1B backbone (random weights, fp32: the same compute) prefilling prompts of these lengths,
    and one frame's step: what a phrase's prefill would cost at real size on this CPU."""
    from csmlab.csm import random_csm

    model = random_csm()
    hidden = model.config.hidden_size
    out = {}
    for length in [1, *positions]:
        embeds = torch.randn(1, length, hidden) * 0.02
        ms, _ = timed(lambda: model(inputs_embeds=embeds, attention_mask=torch.ones(1, length, dtype=torch.long),
                                    use_cache=True, logits_to_keep=1, cache_position=torch.arange(length)), repeats)
        out[f"prefill_{length}_ms"] = round(ms, 1)
        print(json.dumps({"real_size_backbone": {f"prefill_{length}_ms": round(ms, 1)}}), flush=True)
    return out


def main() -> None:
    from csmlab.bench import machine
    from csmlab.csm import Segment, conversation_context, load_csm
    from csmlab.data import real_recording

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=float, nargs="+", default=[2.0, 10.0, 30.0], help="seconds of context")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--real-size", action="store_true",
                        help="also time the real 1B backbone's prefill at these prompts' lengths (random weights, ~7 GB)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    voice, rec = load_csm(), real_recording()
    rows = []
    for seconds in args.context:
        context = conversation_context(rec, seconds)
        row = split(voice, context, args.repeats)
        cache = getattr(voice, "context_codes", None)  # None before the context cache existed
        if cache is not None:
            cache.clear()
        row["frames_first_call_ms"] = first_frame(voice, context)  # encodes (and prefills) everything
        row["frames_again_ms"] = first_frame(voice, context)  # the same context again: cached where cacheable
        longer = conversation_context(rec, seconds + 3)  # one more turn appended
        if len(longer) > len(context):
            row["appended_turn_s"] = round(len(longer[-1].audio) / longer[-1].sample_rate, 2)
            row["frames_appended_ms"] = first_frame(voice, [*context, longer[-1]])
        last = context[-1]  # the last turn grown by 1 s, as MoshiCsmBrain merges a speaker's consecutive phrases
        grown = Segment(last.speaker, last.text + " and so on", np.concatenate([last.audio, last.audio[:rec.sample_rate]]),
                        last.sample_rate)
        row["grown_turn_s"] = round(len(grown.audio) / grown.sample_rate, 2)
        row["frames_grown_ms"] = first_frame(voice, [*context[:-1], grown])
        if cache is not None:
            row["encoded"], row["reused"] = cache.encoded, cache.reused
        rows.append(row)
        print(json.dumps(row))
    if args.real_size:
        real_size_prefill([row["prompt_positions"] for row in rows], args.repeats)
    print(json.dumps({"machine": machine(), "repeats": args.repeats}))


if __name__ == "__main__":
    main()
