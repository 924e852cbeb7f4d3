"""The course's exercise checks: each takes the learner's answer and says whether it is right.

An exercise in a notebook is three cells: the learner's (it starts unanswered, `answer = ...`), a check
from this module, and a collapsed solution cell that runs the same check:

    from csmlab.course import exercises as ex
    ex.frames_in_call(answer)                 # "not answered yet", a hint, or "correct: ..."
    ex.frames_in_call(375).must_pass()        # the solution: raises WrongAnswer unless right

A check returns a `Verdict` (shown as its message) and never raises on a wrong answer, so a learner
sees a hint rather than a traceback. A solution cell shows only "solution checked": its source and
outputs are collapsed in JupyterLab, but GitHub and nbviewer show every cell, so nothing it prints
may give the answer away. The answer's printed forms ("240 ms", "42 %") travel as SHA-256 digests in
the output's metadata (`Solved`), from which `tests/test_notebooks.py` proves that no output above
the exercise prints them. The truth is computed here from the package or from what the
notebook measured and passes in, never typed, so a check stays right when a measurement moves.
`tests/test_exercises.py` feeds every check a plausible wrong answer and expects a rejection.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from csmlab import metrics
from csmlab.errors import CsmlabError


class WrongAnswer(CsmlabError, AssertionError):
    """A solution cell's answer did not pass its check (`Verdict.must_pass`)."""


@dataclass(frozen=True)
class Verdict:
    """What a check decided: `status` is "unanswered", "wrong" or "right"; `message` says why."""

    status: str
    message: str
    answer: str = ""  # the answer as the page would print it ("240 ms"), without the praise around it

    @property
    def ok(self) -> bool:
        return self.status == "right"

    def must_pass(self) -> Solved:
        """For solution cells: a `Solved` that shows no answer when right, else `WrongAnswer` with the hint."""
        if not self.ok:
            raise WrongAnswer(self.message)
        return Solved(self)

    def __repr__(self) -> str:
        return self.message


_FORM = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)\s*(%|[A-Za-z][A-Za-z/]*)")


_DECIMAL = re.compile(r"(?<![\w.])(\d+\.\d+)(?![\w.])")


def answer_forms(text: str) -> set[str]:
    """The "number unit" phrases of a text, normalised ("1,459 frames" -> "1459 frames", "42%" -> "42 %"),
    and its decimals on their own ("4.4", as a table cell prints it): every way an answer can be printed."""
    return _phrases(text) | set(_DECIMAL.findall(text))


_UNTIMED_DECIMAL = re.compile(_DECIMAL.pattern + r"(?!\s*(?:ms|s|us)\b)")  # not a duration


def printed_forms(text: str) -> set[str]:
    """What an output states, to compare with an answer's `answer_forms`: its "number unit" phrases, and
    its decimals on their own except durations. A duration printed above an exercise is this machine's
    measurement, and gives away only a duration: notebook 05's realtime table once measured the
    cascade's p95 at "2.5 ms", and a check on bare decimals took it for the answer of its exercise
    (2.5 frames dropped a second)."""
    return _phrases(text) | set(_UNTIMED_DECIMAL.findall(text))


def _phrases(text: str) -> set[str]:
    return {f"{number.replace(',', '')} {unit.lower()}" for number, unit in _FORM.findall(text)}


def digest(form: str) -> str:
    return hashlib.sha256(form.encode()).hexdigest()


@dataclass(frozen=True)
class Solved:
    """A solution cell's result: it says the check passed, and shows nothing else."""

    verdict: Verdict
    ok = True

    @property
    def message(self) -> str:
        return "solution checked: the check accepts it (the answer stays in this hidden cell)"

    def _repr_mimebundle_(self, include=None, exclude=None):
        forms = sorted(digest(f) for f in answer_forms(self.verdict.answer))
        return {"text/plain": self.message}, {"csmlab": {"solution": True, "answer_sha256": forms}}

    def __repr__(self) -> str:
        return self.message


def _unanswered(*answers) -> bool:
    return any(a is Ellipsis or a is None for a in answers)


def _verdict(answers: tuple, right: bool, praise: str, hint: str, answer: str | None = None) -> Verdict:
    """The three-way decision every check ends with. `answer` is what no output above the exercise may
    print; by default the praise without its parenthesis (which holds measured inputs, not the answer)."""
    if _unanswered(*answers):
        return Verdict("unanswered", "not answered yet: replace the `...` with your answer and run this cell again")
    if right:
        return Verdict("right", f"correct: {praise}", praise.split(" (")[0] if answer is None else answer)
    return Verdict("wrong", f"not yet. Hint: {hint}")


def _as_printed(answer, truth: float, decimals: int) -> bool:
    """`answer` is `truth` as a page prints it with `decimals` decimals (0.42 for 0.4213 at 2), or closer."""
    return _close(answer, truth, rel=0, abs_=0.5 * 10 ** -decimals + 1e-12)


def _close(a, b, rel: float = 1e-6, abs_: float = 1e-9) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_)
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- 00 setup and tour
def frames_in_call(answer) -> Verdict:
    """00, exercise 1: Mimi frames in the 30 s call once resampled to 24 kHz."""
    from csmlab.data import real_recording

    truth = metrics.complete_frames(len(real_recording(metrics.SAMPLE_RATE).audio))
    hint = "a frame is 1920 samples *at 24 kHz* (80 ms), so there are 12.5 frames in every second"
    if _close(answer, len(real_recording().audio) // metrics.FRAME_SIZE):
        hint = "you cut the 16 kHz recording into 1920-sample frames; Mimi's frames are 1920 samples at 24 kHz"
    return _verdict((answer,), _close(answer, truth), f"{truth} frames of 80 ms", hint, answer=f"{truth} frames")


def first_speaker(who, when, turns) -> Verdict:
    """00, exercise 2: who speaks first in `turns` (the RTTM) and when, to within 50 ms."""
    first = min(turns, key=lambda t: t.start)
    if who != first.speaker:
        hint = "sort the turns by `.start`: who owns the earliest one? (the answer is a name, e.g. 'Sheila')"
    else:
        hint = "right speaker; now give the start of that first turn in seconds, within 0.05 s"
    right = who == first.speaker and _close(when, first.start, rel=0, abs_=0.05)
    return _verdict((who, when), right, f"{first.speaker} speaks first, at {first.start:.2f} s", hint)


def overlap_fraction(answer, turns) -> Verdict:
    """00, exercise 3: overlap seconds over the summed speech time of all speakers."""
    from csmlab.data import overlap_seconds, speaking_time

    overlap, speech = overlap_seconds(turns), speaking_time(turns)
    truth = overlap / sum(speech.values())
    hint = "divide the overlap by the speech time summed over both speakers (not by the recording's length)"
    if not _unanswered(answer) and _as_printed(answer, 100 * truth, 1):
        hint = "give a fraction between 0 and 1, not a percentage"
    elif any(_as_printed(answer, overlap / s, 3) for s in speech.values()):
        hint = "that is the overlap over one speaker's time; the speech time is the sum over both speakers"
    elif _as_printed(answer, truth, 2):
        hint = "close: the right quotient, rounded too far; give three decimals (a tenth of a percent)"
    right = _as_printed(answer, truth, 3)  # the page prints the times to 10 ms: three decimals are what it supports
    return _verdict((answer,), right, f"{truth:.1%} of the speech time is overlap", hint)


# ----------------------------------------------------------------------------- 01 Mimi encoding
def kbps_for(answer, num_codebooks: int, codebook_size: int = metrics.CODEBOOK_SIZE,
             frame_rate: float = metrics.FRAME_RATE) -> Verdict:
    """01 exercise 1, 01b exercise 1: a codec's bitrate in kbit/s for `num_codebooks` codebooks."""
    truth = metrics.bitrate(num_codebooks, codebook_size, frame_rate) / 1000
    hint = "codebooks x bits per code (log2 of the codebook size) x frames per second, divided by 1000"
    if _close(answer, 1000 * truth):
        hint = "that is in bit/s; the question asks for kbit/s"
    elif not _unanswered(answer) and not _close(codebook_size, metrics.CODEBOOK_SIZE) and _close(
            answer, metrics.bitrate(num_codebooks, metrics.CODEBOOK_SIZE, frame_rate) / 1000):
        hint = f"this codec's codebooks have {codebook_size} entries, not 2048: log2({codebook_size}) bits each"
    return _verdict((answer,), _close(answer, truth), f"{truth:g} kbit/s", hint)


def codes_for_clip(answer, seconds: float = 5.0, num_codebooks: int = 8) -> Verdict:
    """01, exercise 2: codes a batch encode gives for `seconds` of audio at any rate, mono or stereo."""
    samples = int(seconds * metrics.SAMPLE_RATE)
    truth = num_codebooks * metrics.num_frames(samples)
    hint = "the codec resamples to 24 kHz and mixes stereo to mono first; then frames x codebooks"
    if _close(answer, num_codebooks * metrics.complete_frames(samples)):
        hint = "a batch encode pads the last partial frame (`metrics.num_frames`), it does not drop it"
    elif _close(answer, 2 * truth):
        hint = "stereo is mixed to mono before encoding: one set of codes, not one per channel"
    return _verdict((answer,), _close(answer, truth), f"{truth} codes", hint)


def rvq_levels_needed(answer, errors: list[float], threshold: float) -> Verdict:
    """01, exercise 3: the fewest RVQ levels whose relative error (`errors[n - 1]`) is below `threshold`."""
    truth = next((n for n, e in enumerate(errors, 1) if e < threshold), None)
    hint = f"read the measured errors: which is the first number of levels with an error below {threshold}?"
    return _verdict((answer,), truth is not None and answer == truth, f"{truth} levels", hint)


def same_codes(answer, reference: np.ndarray) -> Verdict:
    """01, exercise 4: streamed codes `[K, T]` against a batch encode of the same audio."""
    if _unanswered(answer):
        return _verdict((answer,), False, "", "")
    answer = np.asarray(answer)
    if answer.shape != reference.shape:
        hint = f"your codes have shape {answer.shape}, the batch encode {reference.shape}"
        if answer.ndim == 2 and answer.shape[0] == reference.shape[0] and answer.shape[1] < reference.shape[1]:
            hint += ": frames are missing; did you `flush()` the session at the end?"
        elif answer.ndim == 2 and answer.shape == reference.shape[::-1]:
            hint += ": concatenate each chunk's [K, T] codes along axis 1"
        return Verdict("wrong", f"not yet. Hint: {hint}")
    agree = float((answer == reference).mean())
    right = np.array_equal(answer[0], reference[0]) and agree >= 0.99
    return _verdict((answer,), right, f"{agree:.2%} of the codes equal the batch encode's",
                    f"only {agree:.1%} of the codes agree: stream the same int16 stereo audio the batch encode got",
                    answer="")  # the answer is code; the agreement it reaches is no secret


# ----------------------------------------------------------------------------- 01b train your own codec
def si_sdr_function(fn: Callable) -> Verdict:
    """01b, exercise 2: the learner's `fn(ref, est)` against `metrics.si_sdr` on seeded signals."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(4000)
    est = 0.5 * ref + 0.3 * rng.standard_normal(4000) + 0.2
    try:
        got = None if fn is Ellipsis else fn(ref, est)
    except Exception as err:  # the learner's code: show what broke instead of a traceback
        return Verdict("wrong", f"not yet: your function raised {type(err).__name__}: {err}")
    if got is None:
        return _verdict((None,), False, "", "")
    hint = "remove the means, project est on ref (target = <est, ref> / <ref, ref> * ref), noise = est - target"
    if not _close(fn(ref, 3 * est), got, rel=1e-6):
        hint = "it changes when est is scaled: SI-SDR projects est on ref first, so the scale does not matter"
    return _verdict((fn,), _close(got, metrics.si_sdr(ref, est), rel=1e-4), f"{got:.2f} dB, as metrics.si_sdr", hint,
                    answer="")  # the answer is code


def which_codebook_hurts(answer, distances: dict[int, float]) -> Verdict:
    """01b, exercise 3: the codebook whose scrambling raises the log-mel distance most."""
    truth = max(distances, key=distances.get)
    measured = ", ".join(f"codebook {k}: {v:.2f}" for k, v in distances.items())
    hint = f"answer with one of {sorted(distances)}, the one whose random codes gave the larger distance"
    return _verdict((answer,), answer == truth, f"codebook {truth} ({measured})", hint)


def ranked_by_distance(answer, distances: dict[str, float]) -> Verdict:
    """01b, exercise 4: the names of `distances` from closest (smallest distance) to farthest."""
    truth = sorted(distances, key=distances.get)
    hint = f"order all of {sorted(distances)}, smallest log-mel distance first"
    right = not _unanswered(answer) and list(answer) == truth
    return _verdict((answer,), right, " < ".join(f"{n} {distances[n]:.2f}" for n in truth), hint,
                    answer="")  # the answer is an order of names, not a printed figure (the distances are the page's data)


def equivalent_bands(answer, vocoder_distance: Callable[[int], float], codec_distance: float) -> Verdict:
    """01b, exercise 5: the fewest noise-vocoder bands at or below the codec's log-mel distance."""
    if _unanswered(answer) or not isinstance(answer, (int, np.integer)) or not 1 <= answer <= 32:
        return _verdict((answer,), False, "", "a whole number of bands between 1 and 32")
    at = vocoder_distance(answer)
    if at > codec_distance:
        return Verdict("wrong", f"not yet. Hint: {answer} bands give {at:.2f}, above the codec's {codec_distance:.2f}: try more bands")
    fewer = next((b for b in range(1, answer) if vocoder_distance(b) <= codec_distance), None)
    hint = f"{fewer} bands already reach the codec's distance: you want the *smallest* count"
    return _verdict((answer,), fewer is None, f"{answer} bands ({at:.2f} <= {codec_distance:.2f})", hint)


# ----------------------------------------------------------------------------- 02 Moshi architecture
def temporal_layer_parameters(answer, layer) -> Verdict:
    """02, exercise 1: parameters of one temporal layer, worked out by hand, against the module's count."""
    truth = sum(p.numel() for p in layer.parameters())
    hint = "attention 4*d*d (q, k, v, out), gated FFN 3*d*h (two in, one out), two RMS norms 2*d"
    return _verdict((answer,), answer == truth, f"{truth:,} parameters", hint)


def latency_with_delay(answer, delay: int) -> Verdict:
    """02, exercise 2: Moshi's theoretical latency (no compute) if acoustic codebooks lag `delay` steps."""
    from csmlab.moshi import REAL_CONFIG, latency_budget_ms, stream_layout

    delays = [0 if s.codebook in (None, 0) else delay for s in stream_layout()]
    truth = latency_budget_ms(0.0, REAL_CONFIG | {"delays": delays})["total"]
    hint = "one 80 ms frame to fill, plus the acoustic delay in frames times 80 ms"
    return _verdict((answer,), _close(answer, truth), f"{truth:.0f} ms", hint)


def survived_glitch(steps, lost: tuple[int, ...]) -> Verdict:
    """02, exercise 3: a MoshiStream fed None at the `lost` steps still gives a frame at every later step."""
    if _unanswered(steps) or not steps:
        return _verdict((None,), False, "", "")
    dropped = [s.index for s in steps if s.user_dropped]
    if dropped != list(lost):
        return Verdict("wrong", f"not yet. Hint: steps {dropped} were fed None; pass None exactly at steps {list(lost)}")
    silent = [s.index for s in steps[1:] if s.audio is None]
    return _verdict((steps,), not silent, f"frames lost at {list(lost)}, Moshi spoke at every step after the first",
                    f"steps {silent} returned no frame", answer="")  # the answer is code


def padding_share(answer, tokens: list[int], pad_id: int) -> Verdict:
    """02, exercise 4: the share of padding tokens in a monologue."""
    truth = tokens.count(pad_id) / len(tokens)
    hint = "count the padding id in the monologue and divide by its length (a fraction between 0 and 1)"
    if _as_printed(answer, 1 - truth, 2):
        hint = "that is the share of frames that are *not* padding"
    elif not _unanswered(answer) and _as_printed(answer, 100 * truth, 0):
        hint = "give a fraction between 0 and 1, not a percentage"
    right = _as_printed(answer, truth, 2)  # 0.42 for 42%, as a learner reads it off a printed share
    return _verdict((answer,), right, f"{truth:.0%} of the frames are padding", hint)


# ----------------------------------------------------------------------------- 03 CSM integration
def frames_budget(answer, fits: Callable[[int], bool]) -> Verdict:
    """03, exercise 1: the most frames that fit the context; `fits(n)` says whether n frames do."""
    if _unanswered(answer):
        return _verdict((answer,), False, "", "")
    hint = "each generated frame takes one position: context length minus the prompt's positions"
    if not fits(answer):
        hint = f"{answer} frames do not fit: " + hint
    elif fits(answer + 1):
        hint = f"{answer + 1} frames still fit: " + hint
    return _verdict((answer,), fits(answer) and not fits(answer + 1), f"{answer} frames fit, {answer + 1} do not", hint)


def same_frames(answer, reference) -> Verdict:
    """03, exercise 2: frames `[N, 32]` from one generation method against another's."""
    if _unanswered(answer):
        return _verdict((answer,), False, "", "")
    answer, reference = np.asarray(answer), np.asarray(reference)
    if answer.shape != reference.shape:
        hint = f"shape {answer.shape}, expected {reference.shape}: stack the frames with torch.stack (one row per frame)"
        return Verdict("wrong", f"not yet. Hint: {hint}")
    return _verdict((answer,), np.array_equal(answer, reference), f"{len(answer)} frames, token for token the same",
                    "same shape, different codes: same text, greedy sampling and max_audio_ms as the reference?",
                    answer="")  # the answer is code


def csm_and_moshi_kbps(csm_kbps, moshi_kbps, csm_codebooks: int, moshi_codebooks: int) -> Verdict:
    """03, exercise 3: the bitrates of CSM's frames and of the part Moshi hears, in kbit/s."""
    csm_truth, moshi_truth = metrics.bitrate(csm_codebooks) / 1000, metrics.bitrate(moshi_codebooks) / 1000
    hint = f"CSM's frames carry {csm_codebooks} codebooks, Moshi hears the first {moshi_codebooks}; kbit/s, not bit/s"
    if _close(csm_kbps, moshi_truth) and _close(moshi_kbps, csm_truth):
        hint = "swapped: CSM's frames are the bigger ones"
    right = _close(csm_kbps, csm_truth) and _close(moshi_kbps, moshi_truth)
    return _verdict((csm_kbps, moshi_kbps), right, f"CSM {csm_truth:g} kbit/s, Moshi hears {moshi_truth:g} kbit/s", hint)


# ----------------------------------------------------------------------------- 06 the four answers
def realtime_bandwidth(answer, parameters: int, bytes_per_parameter: float) -> Verdict:
    """06, exercise 1: GB/s of memory reads for real time, if every weight is read once per 80 ms step."""
    steps_per_s = 1000 / metrics.frame_ms()  # 12.5
    truth = parameters * bytes_per_parameter * steps_per_s / 1e9
    hint = "bytes per step = parameters x bytes per parameter; 12.5 steps a second; 1 GB = 1e9 bytes"
    if _close(answer, parameters * bytes_per_parameter / 1e9, rel=0.02):
        hint = "that is the gigabytes read in *one* step: how many steps come each second?"
    return _verdict((answer,), _close(answer, truth, rel=0.02), f"{truth:.0f} GB/s", hint)


def sessions_per_replica(answer, step_ms: float, cores: int, headroom: float) -> Verdict:
    """06, exercise 2: sessions a replica holds in real time, one core-step of `step_ms` per session per 80 ms."""
    budget = cores * metrics.frame_ms() * headroom  # ms of compute the replica offers every 80 ms
    truth = math.floor(budget / step_ms)
    hint = f"{cores} cores x 80 ms x {headroom} headroom of compute every step, {step_ms:g} ms per session's step"
    if answer == math.floor(cores * metrics.frame_ms() / step_ms):
        hint = "keep the headroom: a replica run at 100% is late at the first hiccup"
    elif answer == math.ceil(budget / step_ms) and answer != truth:
        hint = "round down: a fraction of a session is a session that runs late"
    return _verdict((answer,), answer == truth, f"{truth} sessions per replica", hint)


# ----------------------------------------------------------------------------- 04 duplex pipeline
ARRIVALS = [0, 1, 3, 4, 5, 2, 5, 6]  # exercise 1: the seqs, in the order they arrive
WINDOW = 3


def jitter_truth(arrivals=ARRIVALS, window: int = WINDOW) -> dict[str, int]:
    """What a `JitterBuffer(window)` counts for these arrivals (silence-length frames)."""
    from csmlab.pipeline.jitter import JitterBuffer

    jb = JitterBuffer(window=window)
    for seq in arrivals:
        jb.push(seq, np.zeros(4, np.float32))
    jb.flush()
    c = jb.counts
    return {"consumed": c.consumed, "concealed": c.concealed, "late": c.late, "duplicate": c.duplicate}


def jitter_counts(answer) -> Verdict:
    """04, exercise 1: a dict of consumed / concealed / late / duplicate counts for `ARRIVALS`."""
    truth = jitter_truth()
    if _unanswered(answer):
        return _verdict((answer,), False, "", "")
    if not isinstance(answer, dict) or set(answer) != set(truth):
        return Verdict("wrong", f"not yet. Hint: answer with a dict with exactly the keys {sorted(truth)}")
    wrong = [k for k in truth if answer[k] != truth[k]]
    hint = (f"{', '.join(wrong)} wrong: seq 2 is waited for while fewer than {WINDOW} later frames are held; "
            "what happens to it when it finally arrives, and to the second 5?")
    return _verdict((answer,), not wrong, f"every one of the {len(ARRIVALS)} arrivals is consumed, late or a "
                    f"duplicate, and the gap was concealed ({truth})", hint)


def moshi_latency(answer, report: dict) -> Verdict:
    """04, exercise 2: MoshiBrain's algorithmic latency in ms, read from a session report."""
    truth = sum(report["latency_ms"]["algorithmic"].values())
    hint = ("add up what the report lists under latency_ms -> algorithmic: the frame, and how many steps Moshi's "
            "acoustic codebooks lag behind its semantic one")
    return _verdict((answer,), _close(answer, truth), f"{truth:g} ms before compute, as the Moshi paper says", hint)


RESPONSE_BUDGET_MS = 400  # exercise 3: the median response a caller still hears as prompt


def hang_over(answer, measure: Callable[[float], dict]) -> Verdict:
    """04, exercise 3: an `end_silence_ms` that answers within `RESPONSE_BUDGET_MS` (p50) *and* never
    ends a turn while the user is still speaking. `measure(ms)` is `measure_hang_over` on a side."""
    if _unanswered(answer):
        return _verdict((answer,), False, "", "")
    if not isinstance(answer, (int, float)) or answer <= 0:
        return Verdict("wrong", "not yet. Hint: a hang-over is a positive number of milliseconds")
    m = measure(answer)
    if m["false_ends_s"]:
        hint = (f"the cascade took a pause at {', '.join(f'{t:.1f} s' for t in m['false_ends_s'])} for the end of her turn "
                "and answered while she was mid-sentence: the hang-over must outlast her pauses")
        return Verdict("wrong", f"not yet. Hint: {hint}")
    p50 = m["p50_ms"]
    hint = (f"no false turn ends, but the median response is {p50:.0f} ms, over {RESPONSE_BUDGET_MS} ms: "
            "the hang-over is waited out before every answer; shorten it")
    right = p50 is not None and p50 < RESPONSE_BUDGET_MS
    return _verdict((answer,), right, f"p50 response {p50:.0f} ms, {m['turn_ends']} turn ends, none mid-sentence", hint)


def with_pauses(side, pause_ms: float = 200, longer_than_s: float = 1.0):
    """`side` with a pause of `pause_ms` of silence in the middle of every turn longer than
    `longer_than_s`: a speaker who hesitates mid-sentence, as people do."""
    from dataclasses import replace

    audio = side.audio.copy()
    half = int(pause_ms / 2000 * side.sample_rate)
    for t in side.turns:
        if t.end - t.start > longer_than_s:
            mid = int((t.start + t.end) / 2 * side.sample_rate)
            audio[mid - half: mid + half] = 0
    return replace(side, audio=audio)


MID_TURN_S = 0.1  # a turn end heard this far or more before the RTTM turn's end is a false one


def measure_hang_over(side, end_silence_ms: float) -> dict:
    """The cascade (espeak-ng voice, rule replies) on one side of a call with this hang-over: its p50
    response (ms, None without a turn), the turn ends, and the false ones (seconds into the call):
    where the VAD heard the end of speech inside an RTTM turn, `MID_TURN_S` or more before its end,
    so that the reply starts while the user is mid-sentence."""
    from csmlab.pipeline.cascade import CascadeBrain
    from csmlab.pipeline.session import DuplexSession

    brain = CascadeBrain(voice="espeak", end_silence_ms=end_silence_ms, transcript=side.transcript)
    with DuplexSession(brain) as session:
        for _ in session.run(side.audio, side.sample_rate):
            pass
        response = session.report()["latency_ms"].get("response")
    heard = [(e.t_ms - end_silence_ms) / 1000 for e in session.events.of("turn_end")]  # where the VAD heard speech end
    false = [round(t, 2) for t in heard if any(turn.start < t < turn.end - MID_TURN_S for turn in side.turns)]
    return {"p50_ms": response["p50"] if response else None, "turn_ends": len(heard), "false_ends_s": false}


# ----------------------------------------------------------------------------- 05 live duplex demo
def frame_bytes(answer) -> Verdict:
    """05, exercise 1: bytes one 80 ms mic frame takes on the wire."""
    from csmlab.widget.frames import HEADER_BYTES, KIND_MIC, pack_frame

    truth = len(pack_frame(KIND_MIC, 0, 0.0, np.zeros(metrics.FRAME_SIZE, np.float32)))
    hint = "1920 samples of float32 (4 bytes each), plus the header with seq and capture time"
    if _close(answer, truth - HEADER_BYTES):
        hint = "the samples are right; the frame also carries a header (version, kind, flags, seq, time)"
    elif _close(answer, 2 * metrics.FRAME_SIZE + HEADER_BYTES):
        hint = "the page sends float32 samples, not 16-bit PCM"
    kb_per_s = truth / metrics.frame_ms()  # bytes per ms = kB/s
    return _verdict((answer,), _close(answer, truth), f"{truth} bytes, {kb_per_s:.0f} kB/s", hint)


def drops_per_second(answer, compute_ms: float) -> Verdict:
    """05, exercise 2: frames per second the bounded queue drops when each step takes `compute_ms`."""
    sent = 1000 / metrics.frame_ms()
    truth = max(0.0, sent - 1000 / compute_ms)
    hint = f"the page sends {sent:g} frames per second whatever happens; how many can the kernel take?"
    if _close(answer, 1000 / compute_ms, rel=1e-3):
        hint = "that is how many frames the kernel handles; the question is how many it must drop"
    return _verdict((answer,), _close(answer, truth, rel=1e-3, abs_=1e-3), f"{truth:g} frames dropped per second", hint)


def echo_delay_ms(answer, sent: np.ndarray, heard: np.ndarray, rate: int = metrics.SAMPLE_RATE) -> Verdict:
    """05, exercise 3: the lag (ms) at which the echo's loudness follows the input's, within 20 ms."""
    from csmlab.widget.replay import echo_lag

    truth, corr = echo_lag(sent, heard, rate)
    hint = "compare the loudness envelopes (e.g. log energy per 10 ms) at lags 0..1000 ms; where do they line up?"
    return _verdict((answer,), _close(answer, truth, rel=0, abs_=20),
                    f"the echo follows {truth:.0f} ms later (envelope correlation {corr:.2f})", hint)


def mouth_to_ear_ms(answer, round_trip_ms: float, brain_delay_ms: float, device_ms: float) -> Verdict:
    """05, exercise 4: how long after speaking a learner hears the loopback's echo of it (ms)."""
    truth = round_trip_ms + brain_delay_ms + device_ms
    hint = "the round trip the page measures is only the path's part: add what the brain waits by design and the device's latency"
    if _close(answer, round_trip_ms, rel=0, abs_=1):
        hint = "that is the round trip the page shows; the echo comes the brain's delay later, and the sound card adds its own"
    elif _close(answer, round_trip_ms + brain_delay_ms, rel=0, abs_=1):
        hint = "almost: the AudioContext also reports the device's latency (baseLatency + outputLatency)"
    return _verdict((answer,), _close(answer, truth, rel=0, abs_=1), f"{truth:.0f} ms from mouth to ear", hint)
