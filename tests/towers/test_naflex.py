"""The NaFlex tower: padding never changes an image's embedding (float64), values and gradients; its batch
type splits into micro-batches for gradient caching; bad input is refused with the problem named."""
import pytest
import torch

from siglip_lightning.towers import NaFlexVisionTower, PatchBatch, VisionTower
from siglip_lightning.towers.naflex import antialiased_weights, resize_position_grid
from siglip_lightning.towers.patches import one_image, split_rows

GRIDS = [(3, 5), (6, 2), (1, 7), (4, 4), (2, 1)]


def tower(dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    args = dict(patch_size=2, width=16, layers=2, heads=4, position_grid=4)
    args.update(kwargs)
    return NaFlexVisionTower(**args).to(dtype).eval()


def images(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [one_image(torch.randn(h * w, 12, generator=g, dtype=dtype), (h, w)) for h, w in GRIDS]


def test_an_image_embeds_the_same_alone_and_padded_in_a_batch():
    model = tower()
    singles = images()
    padded = PatchBatch.stack(singles, pad_to=40)  # longest is 16: every row is padded
    padded.patches[~padded.mask] = torch.randn(int((~padded.mask).sum()), 12, dtype=torch.float64) * 100
    with torch.no_grad():
        together = model(padded)
        for row, single in enumerate(singles):
            torch.testing.assert_close(together[row], model(single)[0], atol=1e-9, rtol=0)


def test_padding_gets_no_gradient_and_real_patches_the_same_gradient():
    model = tower()
    singles = images()
    batch = PatchBatch.stack(singles)
    batch.patches.requires_grad_(True)
    model(batch).sum().backward()
    assert batch.patches.grad[~batch.mask].abs().max() == 0
    for row, single in enumerate(singles):
        patches = single.patches.clone().requires_grad_(True)
        model(PatchBatch(patches, single.mask, single.spatial_shapes)).sum().backward()
        n = patches.shape[1]
        torch.testing.assert_close(batch.patches.grad[row, :n], patches.grad[0], atol=1e-9, rtol=0)


def test_position_resize_is_the_antialiased_bilinear_formula():
    """Against a direct float64 evaluation of the triangle filter on each output position."""
    grid = torch.randn(5, 5, 3, dtype=torch.float64)
    for h, w in [(2, 1), (1, 7), (10, 3), (5, 5)]:
        got = resize_position_grid(grid, h, w).reshape(h, w, 3)
        for i in range(h):
            for j in range(w):
                def weights(n_in, n_out, k):
                    scale = n_in / n_out
                    centre = (k + 0.5) * scale - 0.5
                    raw = [max(0.0, 1 - abs(s - centre) / max(scale, 1.0)) for s in range(n_in)]
                    return torch.tensor(raw, dtype=torch.float64) / sum(raw)
                want = torch.einsum("a,b,abd->d", weights(5, h, i), weights(5, w, j), grid)
                torch.testing.assert_close(got[i, j], want, atol=1e-12, rtol=0)
    assert antialiased_weights(4, 4, torch.float64, "cpu").equal(torch.eye(4, dtype=torch.float64))


def test_micro_batches_of_a_patch_batch_are_trimmed_rows():
    batch = PatchBatch.stack(images(), pad_to=30)
    parts = torch.tensor_split(batch, 2)
    assert [len(p) for p in parts] == [3, 2]
    assert parts[1].patches.shape[1] == 16  # (4, 4) is the longest of the last two rows
    assert batch[:1].shape[0] == 1 and batch.shape[0] == 5
    model = tower()
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([model(p) for p in parts]), model(batch), atol=1e-9, rtol=0)
    assert [tuple(r.spatial_shapes[0].tolist()) for r in split_rows(batch)] == GRIDS


def test_gradient_caching_gives_the_plain_gradients():
    from siglip_lightning.losses import SigmoidLoss
    from siglip_lightning.model.module import SigLIPModule
    from siglip_lightning.towers import TextTower

    def module(micro):
        torch.manual_seed(1)
        return SigLIPModule(NaFlexVisionTower(patch_size=2, width=16, layers=1, heads=4, position_grid=4),
                            TextTower(vocab_size=50, context_length=6, width=16, layers=1, heads=4, output_dim=16),
                            loss=SigmoidLoss(), micro_batch_size=micro)

    batch = {"image": PatchBatch.stack(images(torch.float32)), "text": torch.randint(0, 50, (5, 6))}
    from siglip_lightning.model.gradcache import cached_gradient_loss

    grads = []
    for micro in (None, 2):
        m = module(micro)
        if micro is None:
            m.compute_loss(batch).backward()
        else:
            cached_gradient_loss(m, batch["image"], batch["text"], micro)[1].backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=1e-5, rtol=1e-4)


def test_bad_inputs_are_named():
    model = tower()
    with pytest.raises(TypeError, match="set data.naflex"):
        model(torch.zeros(2, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="data.naflex.patch_size"):
        model(one_image(torch.zeros(4, 27, dtype=torch.float64), (2, 2)))
    with pytest.raises(ValueError, match="h \\* w leading patches"):
        model(one_image(torch.zeros(4, 12, dtype=torch.float64), (3, 2)))
    with pytest.raises(ValueError, match="expects 32x32"):
        VisionTower()(torch.zeros(1, 3, 8, 8))
