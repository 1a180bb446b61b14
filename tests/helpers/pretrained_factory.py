"""Tiny "released checkpoints" made offline with the original libraries, as a user would have them on disk:
a transformers ``SiglipModel`` folder (``save_pretrained`` of model + processor) and an open_clip
SigLIP folder (``open_clip_config.json`` + safetensors, tokenised by a SigLIP ``HFTokenizer``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

CAPTIONS = [
    "a photo of a red circle", "two blue squares on the left", "a large green triangle above a cat",
    "the dog is running in the park", "a small yellow star", "people walking near the river",
]


def train_spm(folder: Path, vocab_size: int = 120) -> Path:
    from siglip_lightning.text.sentencepiece import train_sentencepiece

    corpus = [c for c in CAPTIONS for _ in range(20)] + ["café naïve 123 4567 über straße"] * 5
    return train_sentencepiece(corpus, folder / "spm.model", vocab_size=vocab_size)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-default values everywhere, so no key mapping hides behind an init
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def make_hf_siglip(folder: Path, context: int = 16, image_size: int = 16, resample: int = 2,
                   logit_scale: float = 2.1, logit_bias: float = -7.3, seed: int = 0) -> Path:
    """A random tiny ``SiglipModel`` + ``SiglipProcessor`` written with ``save_pretrained``."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    spm = train_spm(folder.parent / f"{folder.name}-spm")
    tokenizer = SiglipTokenizer(vocab_file=str(spm), model_max_length=context)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=context, projection_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8))
    torch.manual_seed(seed)
    model = SiglipModel(config)
    _perturb(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale)
        model.logit_bias.fill_(logit_bias)
    model.save_pretrained(folder)
    images = SiglipImageProcessor(size={"height": image_size, "width": image_size}, resample=resample,
                                  image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.4])
    SiglipProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def make_open_clip_siglip(folder: Path, context: int = 16, image_size: int = 16, seed: int = 0) -> Path:
    """A random tiny open_clip SigLIP model in open_clip's ``local-dir:`` layout, whose text is tokenised
    (as open_clip's released SigLIP models) by an ``HFTokenizer`` with ``clean='canonicalize'``."""
    import open_clip
    from safetensors.torch import save_file
    from transformers import SiglipTokenizer

    from siglip_lightning.interop.openclip import register_timm_vit, timm_name

    folder.mkdir(parents=True, exist_ok=True)
    # the tokenizer files sit in the model folder, as in open_clip's hub snapshots (local-dir: reads them there)
    tokenizer = SiglipTokenizer(vocab_file=str(train_spm(folder.parent / f"{folder.name}-spm")),
                                model_max_length=context)
    tokenizer.save_pretrained(folder)
    vocab = len(tokenizer)
    shape = dict(image_size=image_size, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0, norm_eps=1e-6)
    model_cfg = {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
                 "vision_cfg": {"image_size": image_size, "timm_model_name": register_timm_vit(timm_name(shape)),
                                "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
                 "text_cfg": {"context_length": context, "vocab_size": vocab, "width": 32, "heads": 2, "layers": 2,
                              "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                              # without a config.json, transformers 5's AutoTokenizer needs use_fast=False
                              # to build the sentencepiece SiglipTokenizer
                              "hf_tokenizer_name": str(folder),
                              "tokenizer_kwargs": {"clean": "canonicalize", "use_fast": False},
                              "act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}}}
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                  "resize_mode": "squash", "size": image_size}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    _perturb(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(2.4)
        model.logit_bias.fill_(-6.1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def make_hf_siglip2(folder: Path, context: int = 16, patch_size: int = 4, budget: int = 16, seed: int = 0) -> Path:
    """A random tiny NaFlex ``Siglip2Model`` written with ``save_pretrained``, with its image processor
    and a Gemma-style SentencePiece tokenizer (``tokenizer.model``, as Google's releases ship)."""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    from siglip_lightning.text.gemma import train_gemma_sentencepiece
    from siglip_lightning.data.synthetic import ShapesSpec, make_pair
    from siglip_lightning.text.hf_gemma import save_gemma_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    config = Siglip2Config(
        text_config=dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=context, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           patch_size=patch_size, num_patches=budget))
    torch.manual_seed(seed)
    model = Siglip2Model(config)
    _perturb(model, seed)
    model.save_pretrained(folder)
    Siglip2ImageProcessor(patch_size=patch_size, max_num_patches=budget).save_pretrained(folder)
    captions = [make_pair(ShapesSpec(num_train=300), "train", i)[1] for i in range(300)]
    spm = train_gemma_sentencepiece(captions, folder.parent / f"{folder.name}-spm.model", 350)
    save_gemma_tokenizer(spm, folder, context)
    return folder
