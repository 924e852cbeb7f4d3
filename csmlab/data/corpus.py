"""A synthetic speech corpus spoken by espeak-ng, to train the small offline Mimi (issue 7).

Why synthetic: the course runs offline and in CI, so the training data must be made on the spot,
reproducibly, from nothing but a seed. espeak-ng is a formant synthesiser, so its speech is far
simpler than a person's, but with many accents, voice variants, speeds and pitches it covers
enough of the speech spectrum for a small codec to learn what speech looks like (how far a CPU-sized
run gets is recorded in csmlab/assets/mimi_small/metrics.json).

Texts come from a small seeded grammar rather than a downloaded text corpus. The held-out split is
*unseen twice*: its sentences use nouns that never occur in training, and its voices pair accents
with voice variants that never occur in training. Audio is written as 24 kHz mono 16-bit WAV files
under `data/corpus/{train,heldout}/` with a `manifest.json` that records how each file was made.

Run `python data/make_corpus.py` (or `python -m csmlab.data.corpus`) to build it.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from csmlab.errors import CsmlabError
from csmlab.metrics import SAMPLE_RATE

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "data" / "corpus"

# Accents (espeak-ng base voices) and voice variants (`+variant`), split train / held-out.
TRAIN_ACCENTS = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029"]
HELDOUT_ACCENTS = ["en-us-nyc", "en-gb-x-gbcwmd"]
TRAIN_VARIANTS = [
    "m1", "m2", "m3", "m4", "m5", "m7", "m8", "f1", "f2", "f3", "f5", "klatt", "klatt2", "klatt4",
    "Alex", "Alicia", "Andy", "aunty", "belinda", "benjamin", "boris", "caleb", "david", "ed",
    "edward", "grandma", "iven", "john", "max", "michel", "norbert", "paul", "quincy", "rob",
    "robert", "steph", "victor", "zac", "Storm", "Lee", "Mike", "Hugo", "Gene", "shelby", "adam",
]
HELDOUT_VARIANTS = ["f4", "m6", "klatt3", "linda", "grandpa", "Annie", "travis"]

# A tiny grammar. Nouns are split so that held-out sentences contain words never heard in training.
_SUBJECTS = ["my sister", "the old man", "our teacher", "a young girl", "the doctor", "your friend",
             "the pilot", "his brother", "every student", "the neighbour", "a tired driver", "she", "he",
             "they", "we", "the farmer", "my grandmother", "a quiet boy", "the engineer", "the singer"]
_VERBS = ["found", "bought", "painted", "carried", "forgot", "opened", "cleaned", "watched", "fixed",
          "borrowed", "dropped", "described", "measured", "loved", "hid", "shared", "sold", "followed",
          "noticed", "wanted", "packed", "visited", "counted", "ignored", "pushed", "reached"]
_ADJECTIVES = ["red", "heavy", "broken", "shiny", "small", "enormous", "wooden", "quiet", "strange",
               "golden", "muddy", "bright", "soft", "ancient", "yellow", "frozen", "cheap", "lovely"]
TRAIN_NOUNS = ["box", "window", "bicycle", "garden", "letter", "kettle", "umbrella", "ladder",
               "basket", "piano", "mirror", "jacket", "bottle", "pencil", "candle", "blanket", "wallet",
               "bridge", "river", "market", "kitchen", "village", "horse", "rabbit", "shoe", "clock",
               "camera", "table", "hammer", "guitar", "orange", "tomato", "sandwich", "ticket", "engine",
               "boat", "forest", "island", "mountain", "valley", "castle", "church", "library", "station",
               "truck", "spoon", "carpet", "pillow", "violin", "newspaper", "photograph", "sweater"]
HELDOUT_NOUNS = ["lantern", "trumpet", "pebble", "saddle", "cushion", "volcano", "harbour", "meadow",
                 "chimney", "parrot", "lemonade", "compass", "telescope", "pyramid", "thimble", "wagon"]
_PLACES = ["near the station", "behind the house", "in the morning", "after lunch", "on monday",
           "at the market", "under the bridge", "before dinner", "in the rain", "during the summer",
           "next to the school", "on the way home", "at midnight", "in the park", "by the sea"]
_OPENERS = ["", "", "", "yesterday", "honestly", "of course", "well", "surprisingly", "last week",
            "later that night", "believe it or not", "in fact"]
_QUESTIONS = ["did {s} really say that the {a} {n} was {p}?", "why would anyone want a {a} {n}?",
              "where did you put the {a} {n}?", "how many {n}s can you see {p}?",
              "is it true that {s} {v} a {n}?", "could you bring me the {a} {n}, please?",
              "what time does the {n} shop open?"]
_NUMBERS = ["{k} {a} {n}s cost {m} dollars.", "the {n} weighs {k} kilograms and {m} grams.",
            "room {m} is on floor {k}.", "call me at {m} {k} {k}."]


@dataclass
class Utterance:
    """How one corpus file was made, as recorded in the manifest."""

    file: str
    text: str
    voice: str
    speed: int  # espeak-ng -s, words per minute
    pitch: int  # espeak-ng -p, 0..99
    seconds: float


def make_sentence(rng: random.Random, nouns: list[str]) -> str:
    """One sentence from the grammar: a statement, a question or a sentence with numbers."""
    fill = dict(s=rng.choice(_SUBJECTS), v=rng.choice(_VERBS), a=rng.choice(_ADJECTIVES),
                n=rng.choice(nouns), p=rng.choice(_PLACES), k=rng.randint(2, 19), m=rng.randint(20, 999))
    kind = rng.random()
    if kind < 0.2:
        return rng.choice(_QUESTIONS).format(**fill).capitalize()
    if kind < 0.3:
        return rng.choice(_NUMBERS).format(**fill).capitalize()
    n2 = rng.choice(nouns)
    opener = rng.choice(_OPENERS)
    body = f"{fill['s']} {fill['v']} the {fill['a']} {fill['n']} {fill['p']}"
    if rng.random() < 0.4:
        body += f", and then {rng.choice(_VERBS)} a {rng.choice(_ADJECTIVES)} {n2}"
    return (f"{opener}, {body}." if opener else f"{body}.").capitalize()


def synthesize(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """Speak `text` with espeak-ng and return float32 mono audio at 24 kHz."""
    if shutil.which("espeak-ng") is None:
        raise CsmlabError("espeak-ng is not installed: run `bash scripts/install.sh` "
                          "(or `apt-get install espeak-ng`).")
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)


def plan_split(n: int, seed: int, accents: list[str], variants: list[str], nouns: list[str],
               prefix: str) -> list[tuple[str, str, int, int, str]]:
    """(file, voice, speed, pitch, text) for `n` utterances of one split, deterministic in `seed`."""
    rng = random.Random(seed)
    plan = []
    for i in range(n):
        voice = f"{rng.choice(accents)}+{rng.choice(variants)}"
        plan.append((f"{prefix}_{i:05d}.wav", voice, rng.randint(120, 230), rng.randint(15, 85),
                     make_sentence(rng, nouns)))
    return plan


def build_split(root: Path, split: str, plan: list[tuple[str, str, int, int, str]], workers: int) -> list[Utterance]:
    """Synthesise every planned utterance of a split into `root/split/`, keeping files that exist."""
    out = root / split
    out.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, str, int, int, str]) -> Utterance:
        file, voice, speed, pitch, text = item
        path = out / file
        if not path.exists():
            sf.write(path, synthesize(text, voice, speed, pitch), SAMPLE_RATE, subtype="PCM_16")
        return Utterance(file, text, voice, speed, pitch, round(sf.info(path).duration, 3))

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, plan))


def make_corpus(root: Path = DEFAULT_ROOT, n_train: int = 2000, n_heldout: int = 64, seed: int = 0,
                workers: int = 2) -> dict:
    """Build (or complete) the corpus and write `manifest.json`; returns the manifest."""
    root = Path(root)
    plans = {
        "train": plan_split(n_train, seed, TRAIN_ACCENTS, TRAIN_VARIANTS, TRAIN_NOUNS, "train"),
        "heldout": plan_split(n_heldout, seed + 1, HELDOUT_ACCENTS, HELDOUT_VARIANTS, HELDOUT_NOUNS, "heldout"),
    }
    manifest = {"seed": seed, "sample_rate": SAMPLE_RATE,
                "splits": {name: [asdict(u) for u in build_split(root, name, plan, workers)]
                           for name, plan in plans.items()}}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def load_split(split: str, root: Path = DEFAULT_ROOT) -> list[np.ndarray]:
    """All float32 waveforms of one split, in manifest order."""
    manifest_path = Path(root) / "manifest.json"
    if not manifest_path.exists():
        raise CsmlabError(f"No corpus at {root}: run `python data/make_corpus.py` first.")
    entries = json.loads(manifest_path.read_text())["splits"][split]
    return [sf.read(Path(root) / split / e["file"], dtype="float32")[0] for e in entries]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-heldout", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    manifest = make_corpus(args.root, args.n_train, args.n_heldout, args.seed, args.workers)
    for name, items in manifest["splits"].items():
        hours = sum(u["seconds"] for u in items) / 3600
        print(f"{name}: {len(items)} utterances, {hours:.2f} h, {len({u['voice'] for u in items})} voices")


if __name__ == "__main__":
    main()
