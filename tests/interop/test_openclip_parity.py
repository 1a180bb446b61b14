"""A run trained through the CLI, exported with ``--format open_clip``, is reproduced by plain open_clip
and scored by CLIP_benchmark as our callbacks score it.

In a process that never imports siglip_lightning: ``open_clip.create_model_and_transforms`` and
``get_tokenizer`` on ``local-dir:OUT`` give the run's token ids (captions with punctuation, capitals,
hyphens, digits), its eval-transform pixels, embeddings (1e-5), t' and b; CLIP_benchmark's
zero-shot classification gives ``ZeroShotClassification``'s top-1 / top-5 and its zero-shot
retrieval ``Retrieval``'s R@K, exactly. The run's LayerNorm eps is 1e-5 (timm's JSON ViT has 1e-6:
the export's rescaled residual streams are exercised) and its eval transform is not open_clip's default.
"""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from siglip_lightning.cli import cli_main, main
from siglip_lightning.eval.loading import embed_owned_images, embed_owned_texts
from siglip_lightning.eval.ranking import recall_at_k
from siglip_lightning.eval.zeroshot import class_embeddings, topk_accuracy
from tests.conftest import TINY_MODEL, TINY_TRAINER
from tests.interop.peer import run_peer
from tests.interop.test_hf_pipeline_parity import SPEC, TEMPLATE, _caption, labelled_images, write_training_parquet

TOL = 1e-5
KS = (1, 5)
CONTEXT = ["--model.text_tower.init_args.context_length=16", "--data.context_length=16"]
EVAL_TRANSFORM = ["--data.image_resize_backend=pil_exact", "--data.image_resample=bicubic",
                  "--data.image_mean=[0.45,0.5,0.55]", "--data.image_std=[0.25,0.3,0.28]"]

# numpy >= 2.4 refuses float() of a 1-element array, which clip_benchmark's accuracy() does: the same
# formula with .item(); the rest of CLIP_benchmark runs as shipped.
PEER = """
    import json, sys
    import torch
    from PIL import Image
    import open_clip
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    def accuracy(output, target, topk=(1,)):
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]
    zeroshot_classification.accuracy = accuracy

    args = json.loads(sys.argv[1])
    folder = "local-dir:" + args["folder"]
    model, _, preprocess = open_clip.create_model_and_transforms(folder)
    model.eval()
    tokenizer = open_clip.get_tokenizer(folder)
    pixels = torch.stack([preprocess(Image.open(p)) for p in args["paths"]])
    labels = args["labels"]
    prompts = [args["template"].format(c) for c in args["classes"]]
    with torch.no_grad():
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(tokenizer(prompts), normalize=True)
    class Labelled(torch.utils.data.Dataset):  # CLIP_benchmark reads dataset.classes, as torchvision sets
        classes = args["classes"]
        __len__ = lambda self: len(labels)
        __getitem__ = lambda self, i: (pixels[i], labels[i])
    classify = torch.utils.data.DataLoader(Labelled(), batch_size=5)
    templates = [args["template"].replace("{}", "{c}")]  # CLIP_benchmark's templates name the class {c}
    zeroshot = zeroshot_classification.evaluate(model, classify, tokenizer, args["classes"], templates, "cpu",
                                                amp=False)  # amp on CPU would autocast to bfloat16
    pairs = list(zip(pixels, args["captions"]))
    retrieve = torch.utils.data.DataLoader(pairs, batch_size=5, collate_fn=lambda b: (
        torch.stack([x for x, _ in b]), [t for _, t in b]))
    retrieval = zeroshot_retrieval.evaluate(model, retrieve, tokenizer, "cpu", amp=False, recall_k_list=args["ks"])
    print(json.dumps({"ids": tokenizer(args["texts"]).tolist(), "pixels": pixels.tolist(), "image": image.tolist(),
                      "text": text.tolist(), "logit_scale": model.logit_scale.item(),
                      "logit_bias": model.logit_bias.item(), "zeroshot": zeroshot, "retrieval": retrieval}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("openclip-parity")
    data = write_training_parquet(root / "data")
    cli = cli_main(["fit", *TINY_MODEL, *TINY_TRAINER, *CONTEXT, *EVAL_TRANSFORM, f"--data.path={data}",
                    "--data.val_fraction=0.25", "--trainer.logger=false", f"--trainer.default_root_dir={root / 'run'}",
                    "--trainer.enable_checkpointing=true"])
    ckpt = sorted((root / "run").rglob("*.ckpt"))[-1]
    out = root / "oc"
    main(["export", "--ckpt_path", str(ckpt), "--format", "open_clip", "--out", str(out)])
    paths, labels = labelled_images(root / "images", per_class=2)
    classes = list(SPEC.class_names)
    captions = [[_caption(i, classes[label]), f"The {classes[label].upper()}-thing #{i}."]
                for i, label in enumerate(labels)]
    texts = [TEMPLATE.format(c) for c in classes] + [c for pair in captions for c in pair]
    texts += ["A snake_case_Label: 3.5 x-rays & <b>HTML</b>?", "  Tabs\tand\nnewlines -- 'quoted' \"text\"  "]
    theirs = run_peer(PEER, {"folder": str(out), "paths": [str(p) for p in paths], "labels": labels,
                             "classes": classes, "template": TEMPLATE, "captions": captions, "texts": texts,
                             "ks": list(KS)})
    return cli, paths, labels, classes, captions, texts, theirs


def test_open_clip_gives_the_runs_ids_pixels_embeddings_and_logit_parameters(exported):
    cli, paths, _, classes, _, texts, theirs = exported
    module, datamodule = cli.model.eval(), cli.datamodule
    assert theirs["ids"] == datamodule.tokenizer(texts).tolist()  # the training ids, punctuation and all
    ours_pixels = torch.stack([datamodule.eval_transform(Image.open(p)) for p in paths])
    assert (torch.tensor(theirs["pixels"]) - ours_pixels).abs().max() < 1e-6  # preprocess = eval transform
    with torch.no_grad():
        image, text = module(ours_pixels, datamodule.tokenizer([TEMPLATE.format(c) for c in classes]))
    assert (torch.tensor(theirs["image"]) - image).abs().max() < TOL
    assert (torch.tensor(theirs["text"]) - text).abs().max() < TOL
    assert abs(theirs["logit_scale"] - module.logit_scale.item()) < 1e-6
    assert abs(theirs["logit_bias"] - module.logit_bias.item()) < 1e-6


def test_clip_benchmark_scores_the_export_as_our_callbacks_do(exported):
    cli, paths, labels, classes, captions, _, theirs = exported
    module, datamodule = cli.model.eval(), cli.datamodule
    source = [(i, str(path), label) for i, (path, label) in enumerate(zip(paths, labels))]
    _, features, targets = embed_owned_images(module, source, datamodule.eval_transform, 0, 1, 64, 0, "parity")
    # ZeroShotClassification's code: class embeddings from the template, then top-k
    classifier = class_embeddings(module, datamodule.tokenizer, classes, [TEMPLATE])
    ours = topk_accuracy(features, targets, classifier, KS)
    correct = lambda fraction: round(fraction * len(labels))  # noqa: E731  (torchmetrics' are float32)
    assert correct(theirs["zeroshot"]["acc1"]) == correct(ours["top1"])
    assert correct(theirs["zeroshot"]["acc5"]) == correct(ours["top5"])
    # Retrieval's code: every caption embedded, R@K both ways
    flat = [c for pair in captions for c in pair]
    _, text_features = embed_owned_texts(module, datamodule.tokenizer, flat, 0, 1, 64)
    caption_image = torch.arange(len(captions)).repeat_interleave(2)
    recalls = recall_at_k(features, text_features, caption_image, KS)
    for k in KS:
        assert theirs["retrieval"][f"text_retrieval_recall@{k}"] == pytest.approx(recalls[f"image_to_text_R@{k}"])
        assert theirs["retrieval"][f"image_retrieval_recall@{k}"] == pytest.approx(recalls[f"text_to_image_R@{k}"])


def test_released_timm_names_are_used_only_for_identical_towers():
    from siglip_lightning.interop.openclip_timm import released_name

    base32 = dict(image_size=256, patch_size=32, width=768, layers=12, heads=12, mlp_ratio=4.0, norm_eps=1e-6)
    assert released_name(base32) == "vit_base_patch32_siglip_256"  # tanh-GELU, as ours
    assert released_name({**base32, "norm_eps": 1e-5}) is None
    assert released_name({**base32, "layers": 11}) is None
    # timm's SigLIP 1 towers use exact GELU: not ours, whatever the shape
    assert released_name({**base32, "patch_size": 16, "image_size": 224}) is None


OWN_SHAPE_PEER = """
    import json, sys
    import torch, open_clip
    args = json.loads(sys.argv[1])
    model = open_clip.create_model("local-dir:" + args["folder"]).eval()
    images, text = torch.tensor(args["images"]), torch.tensor(args["text"])
    with torch.no_grad():
        print(json.dumps({"image": model.encode_image(images).tolist(), "text": model.encode_text(text).tolist()}))
"""


def test_an_odd_shape_builds_in_plain_open_clip(tmp_path):
    """An MLP width (61 for width 14) that timm's mlp_ratio arithmetic floors below when given 61 / 14."""
    from siglip_lightning import SigLIPModule, TextTower, VisionTower
    from siglip_lightning.interop.export import export_module

    torch.manual_seed(5)
    module = SigLIPModule(VisionTower(image_size=12, patch_size=4, width=14, layers=2, heads=2,
                                      mlp_ratio=61.5 / 14, norm_eps=1e-6),
                          TextTower(vocab_size=50, context_length=6, width=10, layers=1, heads=2, output_dim=14))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    module.eval()
    assert module.image_tower.transformer.resblocks[0].mlp.c_fc.out_features == 61
    export_module(module, "open_clip", tmp_path)
    images, text = torch.randn(3, 3, 12, 12), torch.randint(0, 50, (3, 6))
    theirs = run_peer(OWN_SHAPE_PEER, {"folder": str(tmp_path), "images": images.tolist(), "text": text.tolist()})
    with torch.no_grad():
        assert (torch.tensor(theirs["image"]) - module.image_tower(images)).abs().max() < TOL
        assert (torch.tensor(theirs["text"]) - module.text_tower(text)).abs().max() < TOL


def test_a_rescaled_export_reads_back_as_the_original_tower(tmp_path):
    """eps 1e-5: the export's residual-stream scaling is undone on the way back in."""
    from siglip_lightning import SigLIPModule, TextTower, VisionTower
    from siglip_lightning.interop.export import export_module
    from siglip_lightning.interop.openclip import create_open_clip, vision_from_open_clip

    torch.manual_seed(6)
    tower = VisionTower(image_size=16, patch_size=8, width=32, layers=2, heads=2, norm_eps=1e-5)
    module = SigLIPModule(tower, TextTower(vocab_size=50, context_length=6, width=32, layers=1, heads=2,
                                           output_dim=32)).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    export_module(module, "open_clip", tmp_path)
    kwargs, state = vision_from_open_clip(create_open_clip(f"local-dir:{tmp_path}"))
    assert kwargs["norm_eps"] == pytest.approx(1e-5)
    again = VisionTower(**kwargs)
    again.load_state_dict(state)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (again.eval()(images) - tower(images)).abs().max() < TOL


def test_a_moved_export_still_loads_through_create_open_clip(tmp_path):
    import shutil

    from siglip_lightning import SigLIPModule, TextTower, VisionTower
    from siglip_lightning.interop.export import export_module
    from siglip_lightning.interop.openclip import create_open_clip

    torch.manual_seed(7)
    module = SigLIPModule(VisionTower(image_size=16, patch_size=8, width=32, layers=1, heads=2),
                          TextTower(vocab_size=50, context_length=6, width=32, layers=1, heads=2, output_dim=32)).eval()
    export_module(module, "open_clip", tmp_path / "first")
    shutil.move(tmp_path / "first", tmp_path / "second")
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        theirs = create_open_clip(f"local-dir:{tmp_path / 'second'}").encode_image(images)
        assert (theirs - module.image_tower(images)).abs().max() < TOL
