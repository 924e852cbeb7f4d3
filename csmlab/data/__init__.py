"""The course's real audio: the two-party telephone recording and the espeak-ng utterances.

`data/fetch.py` prepares the files (scripts/install.sh runs it); this module reads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from csmlab.errors import CsmlabError

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

# The call's two files name its speakers differently: the RTTM (who speaks when) says speaker90 and
# speaker91, the STM transcript says Diane and Sheila (the RTTM's first turn, at 6.69 s, is the
# STM's first "Hello?" by Diane, at 6.68 s). Every Turn this module returns uses the STM's names.
SPEAKER_NAMES = {"speaker90": "Diane", "speaker91": "Sheila"}


@dataclass(frozen=True)
class Turn:
    """One stretch of speech by one speaker, in seconds from the start of the recording."""

    speaker: str
    start: float
    end: float
    text: str = ""


@dataclass(frozen=True)
class Recording:
    """A mono recording with who spoke when (RTTM) and what they said (STM)."""

    audio: np.ndarray  # [T] float32
    sample_rate: int
    turns: list[Turn]  # from the RTTM: speaker turns, no text
    transcript: list[Turn]  # from the STM: utterances with text

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


def _require(path: Path) -> Path:
    if not path.exists():
        raise CsmlabError(f"{path} is missing. Run `python data/fetch.py` (or `make install`) to prepare data/.")
    return path


def load_wav(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read a wav as float32 mono; resample with soxr when `sample_rate` is given."""
    audio, sr = sf.read(str(_require(Path(path))), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sample_rate is not None and sample_rate != sr:
        audio, sr = soxr.resample(audio, sr, sample_rate).astype(np.float32), sample_rate
    return audio, sr


def _read_rttm(path: Path) -> list[Turn]:
    turns = []
    for line in path.read_text().splitlines():
        fields = line.split()
        start, duration = float(fields[3]), float(fields[4])
        turns.append(Turn(SPEAKER_NAMES.get(fields[7], fields[7]), start, start + duration))
    return turns


def _read_stm(path: Path) -> list[Turn]:
    turns = []
    for line in path.read_text().splitlines():
        _, _, speaker, start, end, *words = line.split()
        turns.append(Turn(speaker, float(start), float(end), " ".join(words)))
    return turns


def real_recording(sample_rate: int | None = None) -> Recording:
    """The 30 s two-party telephone call shipped with pyannote.audio (16 kHz unless resampled)."""
    real = DATA_DIR / "real"
    audio, sr = load_wav(real / "sample.wav", sample_rate)
    return Recording(audio, sr, _read_rttm(_require(real / "sample.rttm")), _read_stm(_require(real / "sample.stm")))


def speech_utterances() -> dict[str, tuple[np.ndarray, int, str]]:
    """The espeak-ng utterances of data/speech at their native rates: name -> (audio, rate, text)."""
    out = {}
    for wav in sorted(_require(DATA_DIR / "speech").glob("*.wav")):
        audio, sr = load_wav(wav)
        out[wav.stem] = (audio, sr, wav.with_suffix(".txt").read_text().strip())
    return out


def speaking_time(turns: list[Turn]) -> dict[str, float]:
    """Seconds each speaker talks, summed over their turns."""
    totals: dict[str, float] = {}
    for turn in turns:
        totals[turn.speaker] = totals.get(turn.speaker, 0.0) + turn.end - turn.start
    return totals


def overlap_intervals(turns: list[Turn]) -> list[tuple[float, float]]:
    """(start, end) of every stretch where two different speakers talk at once, in time order."""
    spans = []
    for i, a in enumerate(turns):
        for b in turns[i + 1:]:
            start, end = max(a.start, b.start), min(a.end, b.end)
            if a.speaker != b.speaker and end > start:
                spans.append((start, end))
    return sorted(spans)


def overlap_seconds(turns: list[Turn]) -> float:
    """Seconds during which two different speakers talk at once: what full duplex must handle."""
    return sum(end - start for start, end in overlap_intervals(turns))
