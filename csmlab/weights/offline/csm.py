"""A small CSM with the real structure, in the transformers format of `sesame/csm-1b`.

`sesame/csm-1b` is gated and 6 GB; CI has neither the licence click nor the network. This builder
writes a folder that `CsmForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained`
load exactly like the real one:

- `config.json` + `model.safetensors`: a Llama-style backbone and depth decoder, *much* smaller
  than the real ones (`SMALL_BACKBONE`, `SMALL_DEPTH`) but with the real frame layout: 32 Mimi
  codebooks, an audio vocabulary of 2048 codes + 3 specials (2051), codebook 0 predicted by the
  backbone, codebooks 1..31 by the depth decoder, the real RoPE scaling and context (2048 positions);
- `codec_model`: the full-size offline Mimi (`csmlab.weights.offline.mimi`) converted from moshi's format by
  `csmlab.weights.convert`, so CSM's own Mimi and moshi's Mimi share their weights, as the real ones do;
- a byte-level BPE tokenizer trained in a second on `data/text_corpus.txt`, with Llama-3's special
  tokens in Llama-3's places (`<|begin_of_text|>`, `<|end_of_text|>`, then CSM's `<|AUDIO|>`,
  `<|audio_eos|>`, then reserved ones: 256 specials after the regular vocabulary);
- the processor files: Mimi's feature extractor (24 kHz) and `sesame/csm-1b`'s chat template;
- `generation_config.json` with the released sampling defaults (top-k 50, temperature 0.9).
"""
from __future__ import annotations

from pathlib import Path

import torch

SEED = 1234
REGULAR_VOCAB = 2000  # BPE target; the real Llama-3 vocabulary has 128000 regular tokens
NUM_SPECIAL = 256  # as Llama-3: the specials fill the last 256 ids
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>"]
CORPUS = Path(__file__).resolve().parents[3] / "data" / "text_corpus.txt"

# The released RoPE scaling (llama3 type), as transformers' conversion script writes it.
BACKBONE_ROPE = {"factor": 32.0, "high_freq_factor": 0.5, "low_freq_factor": 0.125,
                 "original_max_position_embeddings": 1024, "rope_type": "llama3"}
DEPTH_ROPE = {"factor": 32.0, "high_freq_factor": 0.0078125, "low_freq_factor": 0.001953125,
              "original_max_position_embeddings": 16, "rope_type": "llama3"}
SMALL_BACKBONE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)  # real: 2048, 8192, 16, 32, 8
SMALL_DEPTH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2)  # real: 1024, 8192, 4, 8, 2
RELEASED_SAMPLING = dict(max_new_tokens=125, do_sample=True, top_k=50, temperature=0.9)

# sesame/csm-1b's chat template: each turn is `<bos>[speaker]text<eos>`, then its audio frames.
CHAT_TEMPLATE = """
{%- for message in messages %}
    {%- if not message['role'] is string or not message['role'].isdigit() %}
        {{- raise_exception("The role must be an integer or a stringified integer (e.g. '0') designating the speaker id") }}
    {%- endif %}
    {%- set content_types = message['content'] | map(attribute='type') | list %}
    {%- if loop.last %}
        {%- if 'text' not in content_types %}
            {{- raise_exception("The last message must include one item of type 'text'") }}
        {%- endif %}
    {%- elif content_types | select('equalto', 'text') | list | length != 1
          or content_types | select('equalto', 'audio') | list | length != 1 %}
        {{- raise_exception("Each message (except the last) must contain exactly one 'text' and one 'audio' item") }}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {{- bos_token }}
    {{- '[' + message['role'] + ']' }}
    {{- message['content'][0]['text'] }}
    {{- eos_token }}
    {%- if message['content']|length > 1 %}
        {{- '<|AUDIO|><|audio_eos|>' }}
    {%- endif %}
{%- endfor %}
"""


def _corpus_lines() -> list[str]:
    if CORPUS.exists():
        return [line for line in CORPUS.read_text().splitlines() if line.strip()]
    from csmlab.data import real_recording

    return [turn.text for turn in real_recording().transcript]


def build_tokenizer():
    """A byte-level BPE (like Llama-3's) trained on the course corpus, specials in Llama-3's layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=REGULAR_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus_lines(), trainer)
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(NUM_SPECIAL - len(SPECIALS))]
    tok.add_special_tokens(SPECIALS + reserved)
    bos, eos = SPECIALS[0], SPECIALS[1]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0", pair=f"{bos}:0 $A:0 {eos}:0 {bos}:1 $B:1 {eos}:1",
        special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos,
                                   model_input_names=["input_ids", "attention_mask"])


def small_config(tokenizer, codec_config):
    """The released `CsmConfig` layout at a small size; special ids point at the tokenizer's specials."""
    from transformers import CsmConfig, CsmDepthDecoderConfig

    depth = CsmDepthDecoderConfig(backbone_hidden_size=SMALL_BACKBONE["hidden_size"], rope_scaling=DEPTH_ROPE,
                                  **SMALL_DEPTH)
    ids = tokenizer.convert_tokens_to_ids(SPECIALS)
    return CsmConfig(
        text_vocab_size=len(tokenizer), bos_token_id=ids[0], pad_token_id=ids[2], audio_token_id=ids[2],
        audio_eos_token_id=ids[3], rope_scaling=BACKBONE_ROPE, depth_decoder_config=depth,
        codec_config=codec_config, **SMALL_BACKBONE,
    )


@torch.no_grad()
def silence_special_codes(model) -> None:
    """Zero the output weights of the 3 non-Mimi codes (2048..2050), as training makes them unlikely.

    A random head scores them like any code, and Mimi has no entry for them. With zero weights their
    logit is exactly 0, below the top 50 random logits (which are positive), so greedy decoding and
    released top-k sampling never pick them.
    """
    codes = model.config.codec_config.codebook_size
    model.lm_head.weight[codes:] = 0  # [2051, H]: codebook 0, from the backbone
    model.depth_decoder.codebooks_head.weight[..., codes:] = 0  # [31, H', 2051]: codebooks 1..31


def build(folder: Path, mimi_path: Path) -> None:
    """Write the small CSM (+ tokenizer, processor) into `folder`, its Mimi converted from `mimi_path`."""
    from transformers import CsmForConditionalGeneration, CsmProcessor, EncodecFeatureExtractor

    from csmlab.weights.convert import transformers_mimi_state

    folder = Path(folder)
    tokenizer = build_tokenizer()
    codec_config, codec_state = transformers_mimi_state(mimi_path, num_codebooks=32)
    torch.manual_seed(SEED)
    model = CsmForConditionalGeneration(small_config(tokenizer, codec_config)).eval()
    model.codec_model.load_state_dict(codec_state, strict=True)
    silence_special_codes(model)
    for config in (model.generation_config, model.depth_decoder.generation_config):
        config._from_model_config = False  # written in full, as the released file is
        config.update(**RELEASED_SAMPLING)
    model.depth_decoder.generation_config.max_new_tokens = None  # always num_codebooks - 1
    model.save_pretrained(folder)
    features = EncodecFeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0)
    CsmProcessor(features, tokenizer, chat_template=CHAT_TEMPLATE).save_pretrained(folder)
