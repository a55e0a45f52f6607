"""A tiny randomly initialised BLIP-2 (OPT text model) and small generated images.

The model has the real BLIP-2 architecture and processor at a few dimensions, so
`features.captions.Blip2Captioner` runs its real loading and generation path on it in
well under a second.  The tokenizer is a word-level one built here (no download).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

WORDS = (
    "<pad> </s> <unk> <image> a an the of on with and plate bowl table red blue green "
    "pizza sushi tacos salad soup bread cake coffee wooden white dark bright small large"
).split()
NUM_QUERY_TOKENS = 2


def save_tiny_blip2(path: Path, seed: int = 0, max_positions: int = 64) -> Path:
    """Write a tiny BLIP-2 model + processor folder to `path` (about 40 KB)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    small = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    config = Blip2Config(
        vision_config={**small, "image_size": 16, "patch_size": 8},
        qformer_config={**small, "encoder_hidden_size": 16, "vocab_size": len(WORDS)},
        text_config={
            "model_type": "opt",
            "hidden_size": 16,
            "ffn_dim": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "word_embed_proj_dim": 16,
            "vocab_size": len(WORDS),
            "max_position_embeddings": max_positions,
            "bos_token_id": vocab["</s>"],
            "eos_token_id": vocab["</s>"],
            "pad_token_id": vocab["<pad>"],
        },
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=vocab["<image>"],
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # larger random weights: different images give different words
        for p in model.parameters():
            p.mul_(20.0)
    # Random weights often pick </s> first; ask for a few words, as a real model gives.
    model.generation_config.min_new_tokens = 3
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": 16, "width": 16}),
        tokenizer=tokenizer,
        num_query_tokens=NUM_QUERY_TOKENS,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def write_images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    """Small random RGB images (JPEG or PNG by the name's suffix), one per name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        pixels = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)
        out.append(folder / name)
    return out
