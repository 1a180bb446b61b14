"""A run trained through the CLI, exported with ``--format hf``, is reproduced by plain transformers.

Captions and the prompt template carry punctuation, capitals, hyphens and digits. In a process that
never imports siglip_lightning, ``pipeline("zero-shot-image-classification")`` must give the scores
and ranking of our ``ZeroShotClassification`` code on the same images and template, and
``AutoModel`` + ``AutoProcessor`` our embeddings (1e-5). Fixed-size (``SiglipModel``) and NaFlex
(``Siglip2Model``, at the run's eval patch budget) alike.
"""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from siglip_lightning.cli import cli_main, main
from siglip_lightning.data.synthetic import ShapesSpec, make_pair, make_zeroshot_example
from siglip_lightning.eval.loading import embed_owned_images
from siglip_lightning.eval.zeroshot import class_embeddings
from tests.conftest import REPO, TINY_MODEL, TINY_TRAINER
from tests.interop.peer import run_peer

TOL = 1e-5
SPEC = ShapesSpec(image_size=32, num_colors=4, num_shapes=3)
TEMPLATE = "A Photo of a {}-Shape, No. 42!"
TEXT_64 = ["--model.text_tower.init_args.context_length=64", "--data.context_length=64"]


def _caption(index: int, text: str) -> str:
    """The shapes caption dressed as web text: capitals, punctuation, hyphens, digits."""
    return f"Photo #{index}: {text.title()} -- {text.replace(' ', '-')}, No. {index % 7}!"


def write_training_parquet(folder: Path, n: int = 96) -> Path:
    import datasets

    rows = [make_pair(SPEC, "train", i) for i in range(n)]
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    table = {"image": [{"bytes": image, "path": None} for image, _ in rows],
             "text": [_caption(i, text) for i, (_, text) in enumerate(rows)]}
    folder.mkdir(parents=True)
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    return folder


def labelled_images(folder: Path, per_class: int = 2):
    """PNG files of the shapes classes at a few sizes and aspect ratios, with their labels."""
    folder.mkdir()
    paths, labels = [], []
    for index in range(per_class * len(SPEC.class_names)):
        image, label = make_zeroshot_example(SPEC, index)
        picture = Image.open(io.BytesIO(image)).convert("RGB").resize((32 + 8 * (index % 3), 32 - 4 * (index % 2)))
        paths.append(folder / f"{index}.png")
        picture.save(paths[-1])
        labels.append(label)
    return paths, labels


PEER = """
    import json, sys
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor, pipeline
    args = json.loads(sys.argv[1])
    folder, classes, template = args["folder"], args["classes"], args["template"]
    images = [Image.open(p) for p in args["paths"]]
    classify = pipeline("zero-shot-image-classification", model=folder)
    ranked = [classify(image, candidate_labels=classes, hypothesis_template=template) for image in images]
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    prompts = [template.format(c) for c in classes]
    if args["naflex"]:  # Siglip2Processor.__call__ puts its class defaults over the folder's: call the parts
        inputs = {**processor.image_processor(images=images, return_tensors="pt"),
                  **processor.tokenizer(prompts, padding="max_length", max_length=64, return_tensors="pt")}
    else:
        inputs = processor(text=prompts, images=images, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    print(json.dumps({"ranked": ranked, "image": out.image_embeds.tolist(), "text": out.text_embeds.tolist(),
                      "ids": inputs["input_ids"].tolist(), "type": type(model).__name__,
                      "pixels": None if args["naflex"] else inputs["pixel_values"].tolist()}))
"""


def _ours(cli, paths, classes):
    """What ZeroShotClassification computes: the callback's own class and image embedding code."""
    module, datamodule = cli.model.eval(), cli.datamodule
    classifier = class_embeddings(module, datamodule.tokenizer, classes, [TEMPLATE])
    source = [(i, str(path), 0) for i, path in enumerate(paths)]
    _, features, _ = embed_owned_images(module, source, datamodule.eval_transform, 0, 1, 64, 0, "parity")
    with torch.no_grad():
        scores = torch.sigmoid(module.logit_scale.exp() * features @ classifier.T + module.logit_bias)
    return features, classifier, scores


def _fit_and_export(tmp_path, args, naflex: bool):
    data = write_training_parquet(tmp_path / "data")
    # data.path after args: a --config among them would otherwise put its own back
    cli = cli_main(["fit", *args, f"--data.path={data}", "--data.val_fraction=0.25", "--trainer.logger=false",
                    f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.enable_checkpointing=true"])
    ckpt = sorted((tmp_path / "run").rglob("*.ckpt"))[-1]
    out = tmp_path / "hf"
    main(["export", "--ckpt_path", str(ckpt), "--format", "hf", "--out", str(out)])
    paths, labels = labelled_images(tmp_path / "images")
    classes = list(SPEC.class_names)
    theirs = run_peer(PEER, {"folder": str(out), "paths": [str(p) for p in paths], "classes": classes,
                             "template": TEMPLATE, "naflex": naflex})
    return cli, paths, labels, classes, theirs


def _check(cli, paths, labels, classes, theirs):
    features, classifier, scores = _ours(cli, paths, classes)
    prompts = [TEMPLATE.format(c) for c in classes]
    assert theirs["ids"] == cli.datamodule.tokenizer(prompts).tolist()  # the training ids, punctuation and all
    assert (torch.tensor(theirs["image"]) - features).abs().max() < TOL
    assert (torch.tensor(theirs["text"]) - classifier).abs().max() < TOL  # one template: class = prompt embedding
    for i, ranked in enumerate(theirs["ranked"]):
        by_label = {r["label"]: r["score"] for r in ranked}
        pipeline_scores = torch.tensor([by_label[c] for c in classes])
        assert (pipeline_scores - scores[i]).abs().max() < TOL
        ours_order = [classes[k] for k in scores[i].argsort(descending=True)]
        theirs_order = [r["label"] for r in ranked]
        gaps = scores[i].sort(descending=True).values.diff().abs()
        if bool((gaps > TOL).all()):  # with no near-ties the rankings must be identical
            assert theirs_order == ours_order
    top1_ours = scores.argmax(dim=1).tolist()
    top1_theirs = [classes.index(r[0]["label"]) for r in theirs["ranked"]]
    accuracy = lambda top1: sum(int(a == b) for a, b in zip(top1, labels)) / len(labels)  # noqa: E731
    assert accuracy(top1_theirs) == accuracy(top1_ours)


def test_cli_run_exported_hf_is_reproduced_by_transformers_pipeline(tmp_path):
    args = [*TINY_MODEL, *TINY_TRAINER, *TEXT_64, "--data.image_resize_backend=torchvision",
            "--data.image_mean=[0.45,0.5,0.55]", "--data.image_std=[0.25,0.3,0.28]"]
    cli, paths, labels, classes, theirs = _fit_and_export(tmp_path, args, naflex=False)
    assert theirs["type"] == "SiglipModel"
    ours = torch.stack([cli.datamodule.eval_transform(Image.open(p)) for p in paths])
    assert (torch.tensor(theirs["pixels"]) - ours).abs().max() < TOL  # the processor is the eval transform
    _check(cli, paths, labels, classes, theirs)


def test_cli_naflex_run_exported_hf_is_reproduced_by_siglip2_pipeline(tmp_path):
    args = [f"--config={REPO / 'configs' / 'naflex.yaml'}", *TINY_TRAINER, *TEXT_64,
            "--data.batch_size=16", "--data.num_workers=0", "--data.shuffle_buffer=64", "--data.vocab_size=300",
            "--data.naflex.patch_size=8", "--data.naflex.budgets=[4,9]", "--data.naflex.eval_budget=9",
            "--model.image_tower.init_args.patch_size=8", "--model.image_tower.init_args.width=32",
            "--model.image_tower.init_args.layers=1", "--model.text_tower.init_args.width=32",
            "--model.text_tower.init_args.layers=1", "--model.text_tower.init_args.output_dim=32",
            "--model.text_tower.init_args.vocab_size=300", "--model.warmup_steps=1", "--trainer.callbacks=[]"]
    cli, paths, labels, classes, theirs = _fit_and_export(tmp_path, args, naflex=True)
    assert theirs["type"] == "Siglip2Model"
    _check(cli, paths, labels, classes, theirs)
