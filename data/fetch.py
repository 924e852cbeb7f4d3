"""Prepare the course's small real audio in data/. Idempotent: files that exist and match are kept.

1. The real two-party telephone recording that ships inside the pyannote.audio 4.0.7 wheel
   (MIT licence): 30 s, 16 kHz mono, with speaker turns (RTTM) and a transcript (STM).
   The wheel is fetched with `pip download` (no install) and checked against its SHA-256.
2. A handful of short synthetic utterances spoken by espeak-ng in several voices, written at
   16, 24 and 44.1 kHz, for prompts and tests of the resampling paths.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REAL = HERE / "real"
SPEECH = HERE / "speech"

WHEEL = "pyannote_audio-4.0.7-py3-none-any.whl"
WHEEL_SHA256 = "852ea15c4d85bc34773e618267603ffca6a521669a74d33742692cc67fc700d6"
SAMPLE_FILES = {
    "sample.wav": "c319b4abca767b124e41432d364fd7df006cb26bb79d09326c487d606a134e6e",
    "sample.rttm": "d78fe62c69d8e6dcbb42c26adfce83faccb374c5a1e6d987fe37f85f1c173c87",
    "sample.stm": "f861f3004927e1c4429199f9695bfd252def75d7d5e4bdf735d3d85fd4a667f7",
}

# (file stem, espeak-ng voice, sample rate, text)
UTTERANCES = [
    ("hello_en_16k", "en", 16000, "Hello, can you hear me? I would like to book a table for two."),
    ("weather_en-us_24k", "en-us", 24000, "The weather today is sunny with a light breeze from the west."),
    ("question_en-gb_44k", "en-gb", 44100, "What time does the last train to the city leave tonight?"),
    ("thanks_en+f3_24k", "en+f3", 24000, "Thank you so much, that was really helpful."),
    ("story_en-us+m3_16k", "en-us+m3", 16000, "Once upon a time, a small robot learned to listen and to speak."),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_real_recording() -> None:
    """Take sample.wav/.rttm/.stm out of the pyannote.audio wheel, verifying every checksum."""
    if all((REAL / n).exists() and sha256(REAL / n) == h for n, h in SAMPLE_FILES.items()):
        print(f"data/real: ok ({len(SAMPLE_FILES)} files, checksums match)")
        return
    REAL.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "pyannote.audio==4.0.7", "-d", tmp],
            check=True,
        )
        wheel = Path(tmp) / WHEEL
        if sha256(wheel) != WHEEL_SHA256:
            raise SystemExit(f"{WHEEL}: checksum mismatch, refusing to use it")
        with zipfile.ZipFile(wheel) as zf:
            for name in SAMPLE_FILES:
                (REAL / name).write_bytes(zf.read(f"pyannote/audio/sample/{name}"))
            (REAL / "LICENSE.pyannote").write_bytes(zf.read("pyannote_audio-4.0.7.dist-info/licenses/LICENSE"))
    for name, expected in SAMPLE_FILES.items():
        if sha256(REAL / name) != expected:
            raise SystemExit(f"data/real/{name}: checksum mismatch")
    print(f"data/real: extracted from {WHEEL}")


def synthesize_utterances() -> None:
    """Speak each utterance with espeak-ng and resample it with sox to its target rate."""
    SPEECH.mkdir(exist_ok=True)
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        print("data/speech: espeak-ng or sox missing, skipped (scripts/install.sh installs them)")
        return
    made = 0
    for stem, voice, rate, text in UTTERANCES:
        wav, txt = SPEECH / f"{stem}.wav", SPEECH / f"{stem}.txt"
        if wav.exists() and txt.exists():
            continue
        with tempfile.NamedTemporaryFile(suffix=".wav") as raw:
            subprocess.run(["espeak-ng", "-v", voice, "-w", raw.name, text], check=True)
            subprocess.run(["sox", raw.name, "-r", str(rate), "-b", "16", str(wav)], check=True)
        txt.write_text(text + "\n")
        made += 1
    print(f"data/speech: {len(UTTERANCES)} utterances ({made} new)")


if __name__ == "__main__":
    fetch_real_recording()
    synthesize_utterances()
