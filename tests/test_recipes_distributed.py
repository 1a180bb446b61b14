"""Every recipe in configs/, launched as a user would on several processes, trains on the global batch.

Each recipe is stacked with its configs/runlocal/ variant and the DDP fragment and run through the
CLI on 4 CPU processes (gloo) for 2 steps. A recording callback (tests/helpers/loss_recorder.py)
saves on every rank the features that entered the loss. The test then recomputes, in float64 from
all ranks' features of each step, the paper's loss over the whole global batch and checks that

- the logged ``train/loss`` (and ``val/loss``) equals it;
- every rank's features received W x its gradient (the ring / gather backward), and t' and b,
  after DDP's average, received exactly its gradient.

With per-device negatives (the dense loss on each rank) all three checks fail.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO, run_cli

CONFIGS = REPO / "configs"
WORLD = 4
# Every top-level config is a recipe checked here, or says why it is not.
CHECKED = ["siglip_b16", "siglit", "siglit_precomputed", "msiglip", "resolution_adapt", "finetune_hf", "naflex",
           "siglip2"]
NOT_RECIPES = {
    "quickstart": "one CPU process by design (make train)",
    "eval_coco": "validate-only: no training loss",
    "eval_imagenet": "validate-only: no training loss",
}
DEFAULT_SUITE = {"siglip_b16"}  # the headline recipe runs in the default suite, the others in the slow one


def global_sigmoid(x, y, t_prime, b):
    """-(1/N) sum_ij log sigmoid(z_ij (t x_i.y_j + b)) over the whole global batch."""
    logits = t_prime.exp() * x @ y.T + b
    labels = 2 * torch.eye(x.shape[0], dtype=x.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / x.shape[0]


def global_softmax(x, y, t_prime):
    logits = t_prime.exp() * x @ y.T
    target = torch.arange(x.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def reference(steps):
    """Global loss and its gradients w.r.t. all features, t' and b, in float64."""
    x = torch.cat([s["x"] for s in steps]).requires_grad_()
    y = torch.cat([s["y"] for s in steps]).requires_grad_()
    t_prime = torch.tensor(math.log(steps[0]["t"]), dtype=torch.float64, requires_grad=True)
    if steps[0]["b"] is None:
        loss = global_softmax(x, y, t_prime)
        grads = torch.autograd.grad(loss, (x, y, t_prime))
        return loss, (*grads, None)
    b = torch.tensor(steps[0]["b"], dtype=torch.float64, requires_grad=True)
    loss = global_sigmoid(x, y, t_prime, b)
    return loss, torch.autograd.grad(loss, (x, y, t_prime, b))


def run_recipe(recipe: str, tmp_path: Path, *extra: str):
    record = tmp_path / "record"
    args = ["fit", "--config", str(CONFIGS / f"{recipe}.yaml"), "--config", str(CONFIGS / "runlocal" / f"{recipe}.yaml"),
            "--config", str(CONFIGS / "strategies" / "ddp.yaml"), f"--trainer.devices={WORLD}",
            "--trainer.accelerator=cpu", "--trainer.max_steps=2", f"--trainer.default_root_dir={tmp_path / 'run'}",
            "--trainer.callbacks+=tests.helpers.loss_recorder.LossRecorder", f"--trainer.callbacks.out_dir={record}",
            *extra]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(record / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert all(r["world"] == WORLD for r in ranks)
    return ranks


def check_global(ranks):
    steps = len(ranks[0]["steps"])
    assert steps == 2 and all(len(r["steps"]) == steps for r in ranks)
    for step in range(steps):
        per_rank = [r["steps"][step] for r in ranks]
        loss, (gx, gy, gt, gb) = reference(per_rank)
        for entry in per_rank:  # every rank logged the global loss of this step
            assert entry["logged"] == pytest.approx(float(loss), rel=1e-5, abs=1e-6), (step, entry["logged"], float(loss))
        shares = sum(e["loss"] for e in per_rank) / WORLD
        assert shares == pytest.approx(float(loss), rel=1e-5, abs=1e-6)
        start = 0
        for entry in per_rank:  # the features' gradient is W x the global one (DDP then averages over W)
            rows = slice(start, start + entry["x"].shape[0])
            start += entry["x"].shape[0]
            if "grad_x" in entry:  # absent when the image tower is locked or precomputed (SigLiT): no gradient wanted
                torch.testing.assert_close(entry["grad_x"], WORLD * gx[rows], rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(entry["grad_y"], WORLD * gy[rows], rtol=1e-4, atol=1e-7)
            assert float(entry["grad_logit_scale"]) == pytest.approx(float(gt), rel=1e-4, abs=1e-7)
            if gb is not None:
                assert float(entry["grad_logit_bias"]) == pytest.approx(float(gb), rel=1e-4, abs=1e-7)
    check_objectives(ranks)
    val = [r["val"] for r in ranks]
    if all(val):  # one validation batch per rank: val/loss is that global batch's loss
        val_loss, _ = reference([v[-1] for v in val])
        for r in ranks:
            assert r["val_logged"] == pytest.approx(float(val_loss), rel=1e-5, abs=1e-6)


def check_objectives(ranks):
    """Each logged objective (SigLIP 2's) is the mean of its per-example losses over the global batch."""
    for step in range(len(ranks[0]["steps"])):
        per_rank = [r["steps"][step] for r in ranks]
        for name in per_rank[0].get("objectives", {}):
            values = torch.cat([entry["objectives"][name] for entry in per_rank])
            assert values.numel() == sum(entry["x"].shape[0] for entry in per_rank)  # every example, every rank
            for entry in per_rank:
                assert entry["objectives_logged"][name] == pytest.approx(float(values.mean()), rel=1e-5, abs=1e-6)


def test_every_recipe_config_is_checked_on_several_processes():
    """A recipe added to configs/ without a multi-process check fails here."""
    top_level = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert top_level == set(CHECKED) | set(NOT_RECIPES), top_level ^ (set(CHECKED) | set(NOT_RECIPES))
    for recipe in CHECKED:
        assert (CONFIGS / "runlocal" / f"{recipe}.yaml").is_file(), f"{recipe} has no configs/runlocal/ variant"


@pytest.fixture(scope="module")
def precomputed_cache(tmp_path_factory):
    """A cache-embeddings folder of the runlocal SigLiT recipe, for siglit_precomputed."""
    from siglip_lightning.cli import cli_main
    from siglip_lightning.commands.cache_embeddings import cache_embeddings

    out = tmp_path_factory.mktemp("siglit-cache")
    cli = cli_main(["--config", str(CONFIGS / "siglit.yaml"), "--config", str(CONFIGS / "runlocal" / "siglit.yaml")],
                   run=False)
    cache_embeddings(cli.model.image_tower, cli.datamodule, out, ("train", "validation"), batch_size=64)
    return out


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=() if r in DEFAULT_SUITE else pytest.mark.slow)
                                    for r in CHECKED])
def test_recipe_trains_on_the_global_batch(recipe, tmp_path, request):
    extra = []
    if recipe == "siglit_precomputed":
        extra = [f"--data.path={request.getfixturevalue('precomputed_cache')}"]
    if recipe == "finetune_hf":  # a tiny released-checkpoint folder made with transformers
        from tests.helpers.pretrained_factory import make_hf_siglip

        extra = ["--pretrained", str(make_hf_siglip(tmp_path / "tiny-siglip"))]
    check_global(run_recipe(recipe, tmp_path, *extra))
