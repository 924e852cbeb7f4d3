"""A small Moshi with the real structure, saved exactly like `kyutai/moshiko-pytorch-bf16`.

The released repository holds four files: the LM (`model.safetensors`), Mimi
(`tokenizer-e351c8d8-checkpoint125.safetensors`), a 32k sentencepiece text tokenizer
(`tokenizer_spm_32k_3.model`) and, in newer repos, a `config.json` with the LM's keyword arguments.
We write the same four files, so the offline model loads through moshi's own
`CheckpointInfo.from_hf_repo(...).get_moshi()` path and every line of csmlab that runs on it runs
unchanged on the real weights.

What is the same as the real model: the classes, the 17 streams (1 text + 8 Moshi audio + 8 user
audio), the acoustic delays, the depformer with one set of weights per codebook, SiLU gating,
RMS norms, RoPE, the 2048-entry audio vocabulary, the special text tokens (0 = end of padding,
3 = padding, `text_card` = start of sequence). What is smaller: the widths and depths (`SMALL`),
and the text vocabulary, which a sentencepiece model trained here in seconds on `data/` sizes.
The weights are random, except that the text head is tilted towards padding as often as a
trained Moshi pads (`tilt_text_head_to_padding`): what it says is noise, but its monologue has
the real shape, and what it costs per layer is real.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import sentencepiece as spm
import torch
from moshi.models import LMGen, loaders
from moshi.models.lm import LMModel
from moshi.utils.compile import no_compile

from csmlab.weights.checkpoint import save_checkpoint
from csmlab.data import DATA_DIR, real_recording

SEED = 1234
CALIBRATION_SPAN_S = (0.0, 12.0)  # the stretch of the real call used to tune the text head: silence, then speech
PADDING_SHARE = 0.7  # share of text steps a trained Moshi spends on padding (most frames carry no new word)
VOCAB_SIZE = 1000  # an upper bound: the tiny corpus decides the final size (hard_vocab_limit=False)

# Moshi's special text tokens, as its released tokenizer and `LMModel` defaults number them.
END_OF_PADDING_ID = 0  # spm's <unk> slot; Moshi uses it to mark the last padding step before a word
PADDING_ID = 3  # spm's <pad>; Moshi's `existing_text_padding_id`

# The real config (`moshi.models.loaders._lm_kwargs`) with small widths and depths; everything
# that shapes the *stream layout* (n_q, dep_q, card, delays) is left as released.
SMALL = {
    "dim": 256,
    "num_heads": 4,
    "num_layers": 4,
    "depformer_dim": 128,
    "depformer_dim_feedforward": int(4.125 * 128),
    "depformer_num_heads": 4,
    "depformer_num_layers": 2,
}


def corpus_lines() -> list[str]:
    """The text the offline tokenizer learns from: the course's dialogue corpus and the call's transcript."""
    corpus = DATA_DIR / "text_corpus.txt"
    lines = corpus.read_text().splitlines() if corpus.exists() else []
    lines += [turn.text for turn in real_recording().transcript]
    return [line.strip() for line in lines if line.strip()]


def train_tokenizer(path: Path) -> spm.SentencePieceProcessor:
    """Train a unigram sentencepiece model at `path` with Moshi's special-token ids (seconds)."""
    model = path.with_suffix("")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_prefix=str(model),
        vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=END_OF_PADDING_ID,
        bos_id=1,
        eos_id=2,
        pad_id=PADDING_ID,
        num_threads=1,
        minloglevel=2,
    )
    model.with_suffix(".vocab").unlink(missing_ok=True)
    return spm.SentencePieceProcessor(model_file=str(path))


def small_config(text_card: int) -> dict:
    """The LM keyword arguments of the offline model, in the `config.json` format moshi reads."""
    config = dict(loaders._lm_kwargs) | SMALL | {"text_card": text_card}
    return config | {
        "moshi_name": loaders.MOSHI_NAME,
        "mimi_name": loaders.MIMI_NAME,
        "tokenizer_name": loaders.TEXT_TOKENIZER_NAME,
        "model_type": "moshi",
    }


@torch.no_grad()
def calibration_codes(mimi_path: Path, num_codebooks: int) -> torch.Tensor:
    """Mimi codes `[1, K, T]` of the real call over `CALIBRATION_SPAN_S`: silence, then both speakers."""
    start, end = (int(s * 24000) for s in CALIBRATION_SPAN_S)
    audio = real_recording(24000).audio[start:end]
    with no_compile():
        mimi = loaders.get_mimi(mimi_path, num_codebooks=num_codebooks)
        return mimi.encode(torch.from_numpy(audio)[None, None])


@torch.no_grad()
def _stream(lm: LMModel, user: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream the user codes `[1, K, T]`; return the normalised transformer outputs the text head
    sees `[T, dim]` and the text tokens LMGen sampled from them `[T]`."""
    hidden, tokens = [], []
    hook = lm.out_norm.register_forward_hook(lambda _module, _inputs, out: hidden.append(out[0, -1]))
    gen = LMGen(lm, on_text_hook=lambda token: tokens.append(int(token[0])))
    with torch.random.fork_rng(), gen.streaming(1), no_compile():
        torch.manual_seed(SEED)
        for t in range(user.shape[-1]):
            gen.step(user[:, :, t : t + 1])
    hook.remove()
    return torch.stack(hidden), torch.tensor(tokens)


@torch.no_grad()
def tilt_text_head_to_padding(lm: LMModel, user: torch.Tensor, share: float = PADDING_SHARE,
                              rounds: int = 5) -> None:
    """Make Moshi sample padding on about `share` of its text steps, as a trained Moshi does.

    A random text head spreads its choice evenly over the vocabulary: every 80 ms frame would get a
    word, and the inner monologue would show no structure. The normalised transformer outputs of a
    random model cluster around one mean direction `u`, so the padding row of the head becomes
    `a u`, and we bisect `a` until the sampled monologue pads on `share` of the steps while Moshi
    listens to `user` (Mimi codes `[1, K, T]` of real speech and silence). Only that row changes;
    the words themselves stay random.
    """
    pad = lm.text_padding_token_id
    hidden, _ = _stream(lm, user)
    direction = hidden.mean(0) / hidden.mean(0).norm()
    low, high = 0.0, 2.0
    for _ in range(rounds):
        lm.text_linear.weight[pad] = (low + high) / 2 * direction
        padded = (_stream(lm, user)[1] == pad).float().mean()
        low, high = (low, (low + high) / 2) if padded > share else ((low + high) / 2, high)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system: copy instead
        dst.write_bytes(src.read_bytes())


def build(folder: Path, mimi_path: Path) -> None:
    """Write the four files of a Moshi repository into `folder`, around the offline Mimi at `mimi_path`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(folder / loaders.TEXT_TOKENIZER_NAME)
    config = small_config(text_card=tokenizer.vocab_size())
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(SEED)
    lm_kwargs = {k: v for k, v in config.items() if not k.endswith("_name") and k != "model_type"}
    lm = LMModel(**lm_kwargs).to(torch.bfloat16).float().eval()  # tune what the bf16 file will hold
    tilt_text_head_to_padding(lm, calibration_codes(mimi_path, lm.n_q - lm.dep_q))
    lm = lm.to(torch.bfloat16)  # the released checkpoint is bf16
    save_checkpoint(lm, folder / loaders.MOSHI_NAME)
    _link_or_copy(Path(mimi_path), folder / loaders.MIMI_NAME)
