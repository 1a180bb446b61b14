"""Fine-tuning controls (model/finetune.py): lr per tower and for t'/b, layer-wise decay, frozen blocks,
frozen b; and WiSE-FT (model/wise_ft.py + ``siglip-lightning wise-ft``) against the plain formula."""
from __future__ import annotations

import pytest
import torch

from siglip_lightning import SigLIPModule, TextTower, VisionTower
from siglip_lightning.cli import cli_main, main
from siglip_lightning.errors import UserInputError
from siglip_lightning.model.optim import parameter_groups
from siglip_lightning.model.wise_ft import interpolate
from tests.conftest import tiny_fit_args

LAYERS = 3


def _module(**controls) -> SigLIPModule:
    torch.manual_seed(0)
    return SigLIPModule(VisionTower(image_size=16, patch_size=8, width=32, layers=LAYERS, heads=2),
                        TextTower(vocab_size=64, context_length=8, width=32, layers=LAYERS, heads=2, output_dim=32),
                        lr=1e-3, **controls)


def _lrs(module: SigLIPModule) -> dict:
    owner = {id(p): n for n, p in module.named_parameters()}
    return {owner[id(p)]: g["lr"] for g in module.parameter_groups() for p in g["params"]}


def test_defaults_change_nothing():
    module = _module()
    assert module.parameter_groups() == parameter_groups(module)
    assert all(p.requires_grad for p in module.parameters())


def test_layer_decay_and_scales_follow_the_formula():
    decay = 0.5
    lrs = _lrs(_module(layer_decay=decay, text_tower_lr_scale=0.3, logit_lr_scale=0.1, image_tower_lr_scale=0.2))
    for tower, scale in (("image_tower", 0.2), ("text_tower", 0.3)):
        embedding = "patch_embed.weight" if tower == "image_tower" else "token_embedding.weight"
        head = "head.probe" if tower == "image_tower" else "text_projection.weight"
        assert lrs[f"{tower}.{embedding}"] == pytest.approx(1e-3 * scale * decay ** (LAYERS + 1))
        for i in range(LAYERS):
            assert lrs[f"{tower}.transformer.resblocks.{i}.mlp.c_fc.weight"] == pytest.approx(
                1e-3 * scale * decay ** (LAYERS - i))
        assert lrs[f"{tower}.{head}"] == pytest.approx(1e-3 * scale)
    assert lrs["logit_scale"] == pytest.approx(1e-4) and lrs["logit_bias"] == pytest.approx(1e-4)


def test_frozen_blocks_and_bias_do_not_move_in_a_cli_fit(tmp_path):
    cli = cli_main(tiny_fit_args(tmp_path, "--model.image_tower.init_args.layers=2", "--model.image_tower_frozen_blocks=1",
                                 "--model.text_tower_frozen_blocks=-1", "--model.learn_logit_bias=false",
                                 "--model.layer_decay=0.7")[1:], run=False)
    module = cli.model
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    cli.trainer.fit(module, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 2
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    assert "image_tower.patch_embed.weight" in frozen and "image_tower.pos_embed" in frozen
    assert "image_tower.transformer.resblocks.0.ln_1.weight" in frozen
    assert "image_tower.transformer.resblocks.1.ln_1.weight" not in frozen
    assert all(n in frozen for n, _ in module.text_tower.named_parameters(prefix="text_tower"))
    assert "logit_bias" in frozen
    for name, param in module.named_parameters():
        if name in frozen:
            assert torch.equal(before[name], param.detach()), name
    assert not torch.equal(before["image_tower.transformer.resblocks.1.mlp.c_fc.weight"],
                           module.image_tower.transformer.resblocks[1].mlp.c_fc.weight)


def test_bad_controls_name_the_key():
    with pytest.raises(UserInputError, match="layer_decay"):
        _module(layer_decay=0.0)
    with pytest.raises(UserInputError, match="image_tower_frozen_blocks=5 but the tower has 3 blocks"):
        _module(image_tower_frozen_blocks=5)


def test_interpolate_is_the_formula():
    gen = torch.Generator().manual_seed(3)
    a = {"w": torch.randn(4, 5, generator=gen), "n": torch.tensor(3)}
    b = {"w": torch.randn(4, 5, generator=gen), "n": torch.tensor(7)}
    for alpha in (0.0, 0.3, 1.0):
        out = interpolate(a, b, alpha)
        assert torch.allclose(out["w"], (1 - alpha) * a["w"] + alpha * b["w"], atol=1e-7)
        assert out["n"] == 7
    with pytest.raises(UserInputError, match="different tensors"):
        interpolate(a, {"w": b["w"]}, 0.5)


def test_wise_ft_command_from_an_init_from_run(tmp_path):
    """alpha 0 gives the weights the run started from, 1 the fine-tuned ones, 0.5 the midpoint; a grid
    is validated through the CLI with the zero-shot callback and reported (CSV, markdown, PNG)."""
    first = cli_main(tiny_fit_args(tmp_path / "pre"))
    start = next((tmp_path / "pre").rglob("*.ckpt"))
    tuned_cli = cli_main(tiny_fit_args(tmp_path / "ft", f"--model.init_from={start}"))
    tuned = next((tmp_path / "ft").rglob("*.ckpt"))
    assert first.trainer.global_step == tuned_cli.trainer.global_step == 2
    initial = torch.load(start, weights_only=True)["state_dict"]
    final = torch.load(tuned, weights_only=True)["state_dict"]
    for alpha in (0.0, 0.5, 1.0):
        out = tmp_path / f"a{alpha}.ckpt"
        main(["wise-ft", "--finetuned", str(tuned), "--alpha", str(alpha), "--out", str(out)])
        state = torch.load(out, weights_only=True)["state_dict"]
        for key in final:
            if final[key].is_floating_point():
                assert torch.allclose(state[key], (1 - alpha) * initial[key] + alpha * final[key], atol=1e-6), key
    config = next((tmp_path / "ft").rglob("config.yaml"))
    extra = tmp_path / "eval.yaml"
    extra.write_text("trainer:\n  callbacks:\n    - class_path: siglip_lightning.eval.ZeroShotClassification\n"
                     "      init_args: {name: builtin}\n")
    main(["wise-ft", "--finetuned", str(tuned), "--alphas", "[0, 1]", "--out", str(tmp_path / "grid"),
          "--eval_config", f"[{config}, {extra}]"])
    report = (tmp_path / "grid" / "wise_ft.csv").read_text().splitlines()
    assert report[0].startswith("alpha,") and "zeroshot/builtin/top1" in report[0] and len(report) == 3
    assert (tmp_path / "grid" / "wise_ft.png").stat().st_size > 0


@pytest.mark.slow  # the full built-in data set, 4 fits and 3 wise-ft grids: ~10 min on 2 cores
def test_forgetting_experiment_quick(tmp_path):
    from siglip_lightning.experiments.forgetting import main as forgetting

    forgetting(["--out", str(tmp_path), "--quick"])
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0] == "seed,variant,alpha,zeroshot_A,zeroshot_B" and len(rows) == 1 + 5 + 1 + 1
    assert (tmp_path / "plot.png").stat().st_size > 0 and "WiSE-FT" in (tmp_path / "table.md").read_text()
