"""The NaFlex data path: transformers' resize rule, varied-aspect built-in data, batches of patches with
per-batch budgets that a second pass (or a resumed one) draws again, and a CLI fit of a NaFlex model."""
import json
import os
import random
from pathlib import Path
from typing import Optional

import pytest
import torch
from lightning.pytorch import Callback

from siglip_lightning.data.datamodule import ImageTextDataModule
from siglip_lightning.data.naflex import NaFlexSpec, grid_for_budget
from siglip_lightning.data.synthetic import ShapesSpec
from siglip_lightning.errors import UserInputError
from siglip_lightning.towers import PatchBatch
from tests.conftest import REPO, TINY_DATA, TINY_TRAINER

SPEC = dict(num_train=256, num_validation=32, zeroshot_per_class=1, num_shards=2, image_size=32, max_aspect=2.0)


def test_grid_rule_is_transformers():
    pytest.importorskip("transformers")
    from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches

    rng = random.Random(0)
    for _ in range(300):
        h, w, p, budget = rng.randint(1, 900), rng.randint(1, 900), rng.choice([4, 14, 16]), rng.randint(1, 1100)
        assert grid_for_budget(h, w, p, budget) == get_image_size_for_max_num_patches(h, w, p, budget)


def test_builtin_data_at_varied_aspect_ratios_keeps_square_data_unchanged(tmp_path):
    from siglip_lightning.data.synthetic import make_pair
    from PIL import Image
    import io

    square, varied = ShapesSpec(**{**SPEC, "max_aspect": 1.0}), ShapesSpec(**SPEC)
    assert square.fingerprint() == ShapesSpec(**{k: v for k, v in SPEC.items() if k != "max_aspect"}).fingerprint()
    ratios = [Image.open(io.BytesIO(make_pair(varied, "train", i)[0])).size for i in range(200)]
    aspects = [w / h for w, h in ratios]
    assert min(aspects) < 0.6 and max(aspects) > 1.7 and all(0.48 < a < 2.1 for a in aspects)
    assert all(Image.open(io.BytesIO(make_pair(square, "train", i)[0])).size == (32, 32) for i in range(5))
    with pytest.raises(ValueError, match="max_aspect"):
        ShapesSpec(max_aspect=0.5)


def datamodule(tmp_path, **naflex):
    dm = ImageTextDataModule(batch_size=16, num_workers=0, shuffle_buffer=32, builtin=ShapesSpec(**SPEC),
                             context_length=8, vocab_size=300, tokenizer_type="gemma", cache_dir=str(tmp_path),
                             naflex=NaFlexSpec(**naflex))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_are_padded_patches_with_a_budget_per_batch_drawn_again_on_a_second_pass(tmp_path):
    dm = datamodule(tmp_path, patch_size=4, budgets=[16, 36, 64])
    first = list(dm.train_dataloader())
    again = list(dm.train_dataloader())
    budgets = set()
    for batch, other in zip(first, again):
        images = batch["image"]
        assert isinstance(images, PatchBatch) and images.patches.shape[-1] == 48
        counts = images.spatial_shapes.prod(1)
        assert torch.equal(counts, images.mask.sum(1)) and images.patches.shape[1] == int(counts.max())
        budget = next(b for b in (16, 36, 64) if counts.max() <= b and counts.min() > b * 0.4)
        budgets.add(budget)
        assert len({tuple(s) for s in images.spatial_shapes.tolist()}) > 1  # several aspect ratios in one batch
        torch.testing.assert_close(images.patches, other["image"].patches, atol=0, rtol=0)
        assert torch.equal(batch["text"][:, 0] != 0, torch.ones(16, dtype=torch.bool))
        assert (batch["text"] == 1).sum(1).eq(1).all()  # one EOS (id 1), the rest padding id 0
    assert len(budgets) > 1, budgets


def test_eval_batches_use_the_eval_budget_and_padding_to_budget(tmp_path):
    dm = datamodule(tmp_path, patch_size=4, budgets=[16, 64], eval_budget=25, pad_to="budget")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].patches.shape[1] == 25 and (batch["image"].spatial_shapes.prod(1) <= 25).all()
    with pytest.raises(UserInputError, match="budgets"):
        NaFlexSpec(budgets=[])


def test_cli_fits_a_naflex_model_on_varied_aspect_data(tmp_path):
    from siglip_lightning.cli import cli_main

    args = ["fit", f"--config={REPO / 'configs' / 'naflex.yaml'}", *TINY_DATA, *TINY_TRAINER,
            "--data.builtin.max_aspect=2.0", "--data.batch_size=16", "--data.num_workers=0",
            "--data.shuffle_buffer=64", "--data.context_length=8", "--data.vocab_size=300",
            "--data.naflex.patch_size=8", "--data.naflex.budgets=[4,9]", "--data.naflex.eval_budget=9",
            "--model.image_tower.init_args.patch_size=8", "--model.image_tower.init_args.width=32",
            "--model.image_tower.init_args.layers=1", "--model.text_tower.init_args.width=32",
            "--model.text_tower.init_args.layers=1", "--model.text_tower.init_args.output_dim=32",
            "--model.text_tower.init_args.context_length=8", "--model.text_tower.init_args.vocab_size=300",
            "--model.warmup_steps=1", "--model.micro_batch_size=8", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false", "--trainer.callbacks+=siglip_lightning.eval.Retrieval",
            "--trainer.callbacks.name=builtin", "--trainer.callbacks.patch_budget=4"]
    cli = cli_main(args)
    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "val/loss", "zeroshot/builtin/top1", "retrieval/builtin/image_to_text_R@1"):
        assert key in metrics and torch.isfinite(metrics[key]), sorted(metrics)


def test_cli_refuses_naflex_patches_of_another_size_than_the_towers_before_training(tmp_path):
    from siglip_lightning.cli import cli_main

    args = ["fit", f"--config={REPO / 'configs' / 'naflex.yaml'}", *TINY_DATA, *TINY_TRAINER,
            "--data.builtin.max_aspect=2.0", "--data.batch_size=16", "--data.num_workers=0",
            "--data.naflex.patch_size=4", "--data.naflex.budgets=[4,9]", "--data.naflex.eval_budget=9",
            "--model.image_tower.init_args.patch_size=8", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false"]
    with pytest.raises(UserInputError, match=r"data.naflex.patch_size is 4 but model.image_tower.init_args.patch_size is 8"):
        cli_main(args)


def test_cli_fit_then_export_loads_in_transformers(tmp_path):
    """fit -> last.ckpt -> ``siglip-lightning export --format hf`` -> AutoModel/AutoProcessor give our embeddings."""
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    from siglip_lightning.cli import cli_main, main
    from siglip_lightning.model.module import SigLIPModule

    args = ["fit", f"--config={REPO / 'configs' / 'naflex.yaml'}", *TINY_DATA, *TINY_TRAINER,
            "--data.builtin.max_aspect=2.0", "--data.batch_size=16", "--data.num_workers=0",
            "--data.shuffle_buffer=64", "--data.context_length=8", "--data.vocab_size=300",
            "--data.naflex.patch_size=8", "--data.naflex.budgets=[4,9]", "--data.naflex.eval_budget=6",
            "--model.image_tower.init_args.patch_size=8", "--model.image_tower.init_args.width=32",
            "--model.image_tower.init_args.layers=1", "--model.text_tower.init_args.width=32",
            "--model.text_tower.init_args.layers=1", "--model.text_tower.init_args.output_dim=32",
            "--model.text_tower.init_args.context_length=8", "--model.text_tower.init_args.vocab_size=300",
            "--model.warmup_steps=1", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
            "--trainer.callbacks=[]", "--trainer.callbacks+=siglip_lightning.checkpointing.ResumableCheckpoint",
            f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}", "--trainer.callbacks.save_last=true"]
    cli_main(args)
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    main(["export", f"--ckpt_path={ckpt}", "--format=hf", f"--out={tmp_path / 'hf'}"])
    model = SigLIPModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "hf")
    assert processor.image_processor.max_num_patches == 6 and processor.image_processor.patch_size == 8
    images = [Image.new("RGB", (30, 61), (200, 40, 40)), Image.new("RGB", (70, 20), (40, 40, 220))]
    texts = ["A red square", "a blue circle in the middle"]
    # Siglip2Processor's call applies its class defaults (patch 16, 256 patches, 64 tokens) over the
    # saved image processor / tokenizer settings: a model of other sizes passes them per call
    inputs = processor(images=images, text=texts, max_length=8, patch_size=8, max_num_patches=6, return_tensors="pt")
    alone = processor.image_processor(images=images, return_tensors="pt")  # this one reads its saved settings
    torch.testing.assert_close(alone["pixel_values"], inputs["pixel_values"], atol=0, rtol=0)
    assert inputs["input_ids"].shape == (2, 8) and (inputs["input_ids"] == 1).sum() == 2
    with torch.no_grad():
        out = hf(**inputs)
        ours_image = model.encode_image(dict(pixel_values=inputs["pixel_values"],
                                             pixel_attention_mask=inputs["pixel_attention_mask"],
                                             spatial_shapes=inputs["spatial_shapes"]))
        ours_text = model.encode_text(inputs["input_ids"])
    torch.testing.assert_close(ours_image, out.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_text, out.text_embeds, atol=1e-5, rtol=1e-5)


class RecordPatches(Callback):
    """Appends ``[global_step, ids, grid shapes]`` of every training batch to a jsonl file; may die at a step.

    Args:
        path: file to append to.
        die_at_step: ``os._exit(17)`` right after this many optimizer steps (a killed run).
    """

    def __init__(self, path: str, die_at_step: Optional[int] = None) -> None:
        self.path, self.die_at_step = path, die_at_step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps([trainer.global_step, [int(i) for i in batch["id"]],
                                batch["image"].spatial_shapes.tolist()]) + "\n")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.die_at_step is not None and trainer.global_step >= self.die_at_step:
            os._exit(17)


@pytest.mark.slow
def test_killed_naflex_run_resumes_with_the_same_samples_and_budgets(tmp_path):
    """Exact mid-epoch resume is unchanged by NaFlex: same samples, same per-batch budgets, same grids."""
    from tests.conftest import run_cli, tiny_fit_args
    from tests.data.test_cli import data_args, make_dataset

    path = make_dataset(tmp_path / "data", "parquet", sizes=(20, 28))
    naflex = ["--model.image_tower=siglip_lightning.NaFlexVisionTower", "--model.image_tower.init_args.patch_size=4",
              "--model.image_tower.init_args.width=32", "--model.image_tower.init_args.layers=1",
              "--model.image_tower.init_args.heads=2", "--data.naflex.patch_size=4", "--data.naflex.budgets=[4,9,16]"]

    def args(root, record, *extra):
        return tiny_fit_args(root, *data_args(path, "--data.num_workers=2", "--data.shuffle_buffer=8",
                                              "--data.batch_size=4"), *naflex,
                             "--trainer.max_steps=14", "--trainer.limit_val_batches=0",
                             "--trainer.callbacks+=tests.data.test_naflex.RecordPatches",
                             f"--trainer.callbacks.path={record}", *extra)

    ckpt = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}", "--trainer.callbacks.every_n_train_steps=5",
            "--trainer.callbacks.save_top_k=-1"]
    full = run_cli(args(tmp_path / "a", tmp_path / "full.jsonl"))
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run_cli(args(tmp_path / "b", tmp_path / "killed.jsonl", "--trainer.callbacks.die_at_step=7", *ckpt))
    assert killed.returncode == 17, killed.stderr[-3000:]
    checkpoint = next((tmp_path / "ckpt").glob("*step=5.ckpt"))
    resumed = run_cli(args(tmp_path / "b", tmp_path / "resumed.jsonl", f"--ckpt_path={checkpoint}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    read = lambda name: [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]  # noqa: E731
    uninterrupted, after = read("full.jsonl"), read("resumed.jsonl")
    assert [row[1:] for row in after] == [row[1:] for row in uninterrupted[5:]]
    lengths = {max(h * w for h, w in row[2]) for row in uninterrupted}
    assert len(lengths) > 1, lengths  # several budgets were drawn


def test_eval_callbacks_cut_images_at_their_patch_budget_and_refuse_it_for_squares():
    from types import SimpleNamespace

    from PIL import Image

    from siglip_lightning.data.naflex import NaFlexTransform
    from siglip_lightning.data.transforms import ImageTransform
    from siglip_lightning.eval import Retrieval, ZeroShotClassification

    image = Image.new("RGB", (90, 30))
    naflex = SimpleNamespace(datamodule=SimpleNamespace(tokenizer=object(), eval_transform=NaFlexTransform(4, 16)),
                             precision_plugin=None)
    transform = ZeroShotClassification(patch_budget=48).context(naflex).transform
    assert transform(image).spatial_shapes.tolist() == [[4, 12]]  # 48 patches at 1:3
    assert Retrieval(name="r").context(naflex).transform(image).spatial_shapes.tolist() == [[2, 6]]  # eval budget 16
    squares = SimpleNamespace(datamodule=SimpleNamespace(tokenizer=object(), eval_transform=ImageTransform(32)),
                              precision_plugin=None)
    with pytest.raises(UserInputError, match="patch_budget is for NaFlex models"):
        Retrieval(name="r", patch_budget=16).context(squares)
    with pytest.raises(UserInputError, match="patch_budget must be positive"):
        Retrieval(name="r", patch_budget=0)


class RecordBudgets(Callback):
    """Appends ``[global_step, patch budget]`` of every training batch to ``path.<rank>``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        with open(f"{self.path}.{trainer.global_rank}", "a") as f:
            f.write(json.dumps([trainer.global_step, int(batch["patch_budget"])]) + "\n")


def test_every_rank_of_a_step_draws_the_same_budget_whatever_each_rank_skipped(tmp_path):
    """2 DDP processes, 2 workers each, a shard per rank; rank 1's shard has undecodable images, so its
    stream positions run ahead of rank 0's: the budgets are still drawn per step, the same on both."""
    from tests.conftest import run_cli, tiny_fit_args
    from tests.data.test_cli import data_args
    from tests.helpers.data_factory import pairs, write_parquet

    rows = pairs(64)
    for row in rows[40:64:3]:  # the second shard (rank 1): every third image is not an image
        row["image"] = b"not an image"
    path = write_parquet(tmp_path / "data", rows, sizes=(32, 32))
    record = tmp_path / "budgets"
    result = run_cli(tiny_fit_args(
        tmp_path / "run", *data_args(str(path), "--data.num_workers=2", "--data.shuffle_buffer=0",
                                     "--data.batch_size=2"),
        "--model.image_tower=siglip_lightning.NaFlexVisionTower", "--model.image_tower.init_args.patch_size=4",
        "--model.image_tower.init_args.width=32", "--model.image_tower.init_args.layers=1",
        "--model.image_tower.init_args.heads=2", "--data.naflex.patch_size=4", "--data.naflex.budgets=[4,9,16]",
        "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=10", "--trainer.limit_val_batches=0",
        "--trainer.callbacks+=tests.data.test_naflex.RecordBudgets", f"--trainer.callbacks.path={record}"))
    assert result.returncode == 0, result.stderr[-3000:]
    read = lambda rank: [json.loads(line) for line in Path(f"{record}.{rank}").read_text().splitlines()]  # noqa: E731
    rank0, rank1 = read(0), read(1)
    assert len(rank0) == len(rank1) == 10
    assert rank0 == rank1
    assert len({budget for _, budget in rank0}) > 1  # several budgets were drawn


def test_padding_benchmark_runs_and_checks_the_collate_against_its_count():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "naflex_padding.py"), "--batches", "2",
                             "--budgets", "256", "--batch_sizes", "8"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| photos")]
    assert len(rows) == 2 and all(float(cell.strip(" %")) < 100 for row in rows for cell in row.split("|")[4:6])
