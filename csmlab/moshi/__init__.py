"""Moshi, Kyutai's full-duplex dialogue model: the real 7B inspected on `meta`, a small twin that runs.

Moshi (Défossez et al. 2024, "Moshi: a speech-text foundation model for real-time dialogue";
upstream `moshi/models/lm.py`) models 17 token streams at Mimi's 12.5 Hz: one text stream (its
*inner monologue*), 8 audio codebooks for what Moshi says and 8 for what the user says. Every
80 ms a 7B *temporal* transformer reads one step of all 17 streams, then a small *depth*
transformer (the depformer) samples Moshi's 8 codebooks one after the other. The acoustic
codebooks (1..7) lag one step behind the semantic one (0): that 80 ms acoustic delay, plus the
80 ms Mimi frame, is Moshi's 160 ms theoretical latency.

- `architecture`: the real config on the `meta` device: streams, parameter counts, weight memory;
- `stream`: `load()` through moshi's own loader and `MoshiStream`, one 80 ms step at a time;
- `dialogue`: a streamed conversation, the inner monologue, the depformer step by step;
- `compute`: per-step time at real size, measured on a few layers and extrapolated;
- `plots`: the stream grid and the conversation timeline.

Threads: one loaded `Moshi` serves any number of `MoshiStream`s from any threads, each giving the
tokens it gives alone: a stream keeps its own caches and installs them only during its own step,
under the model's lock (steps on one model run one at a time). A stream dropped without `close()`
leaves the model free, and re-running `st = MoshiStream(m)` in a notebook works. See `MoshiStream`.
"""
from csmlab.moshi.architecture import (
    BYTES_PER_PARAM,
    COMPONENTS,
    REAL_CONFIG,
    SYSTEM,
    USER,
    Stream,
    expected_parameter_counts,
    latency_budget_ms,
    lm_kwargs,
    meta_model,
    parameter_counts,
    stream_layout,
    weight_gb,
)
from csmlab.moshi.compute import extrapolate, measure_depths, measure_step_ms, real_size_lm
from csmlab.moshi.dialogue import DepthStep, Dialogue, converse, depth_walkthrough, encode_user, monologue, speaker_track
from csmlab.moshi.stream import END_OF_PADDING_ID, Moshi, MoshiStream, Step, check_user_codes, load
