"""The planner's live-bytes tracker against hand counts on real tensors, and fake tensors against real ones."""
from __future__ import annotations

import torch
from torch import nn

from siglip_lightning import _compat
from siglip_lightning.plan.tracker import LiveBytes


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def test_counts_new_storages_until_freed_and_not_views_or_older_storages():
    older = torch.randn(300)
    tracker = LiveBytes()
    with tracker:
        a = torch.randn(2000)
        first = _bytes(a)
        view = older[:10].view(2, 5)  # a view of a storage made before the tracker: nothing new
        b = a * 2
        both = first + _bytes(b)
        del a
        c = b.view(4, 500)  # a view of a counted storage: nothing new
        d = older + 1
        after = _bytes(b) + _bytes(d)
    totals = [other + grads for _, other, grads in tracker.timeline]
    assert max(totals) == both
    assert totals[-1] == after == tracker.other
    assert view.shape == (2, 5) and c.shape == (4, 500)


def test_parameter_gradients_are_counted_apart():
    weight = nn.Parameter(torch.randn(64, 32))
    tracker = LiveBytes()
    hooks = tracker.watch_gradients([weight])
    with tracker:
        (weight * 3).sum().backward()
    for hook in hooks:
        hook.remove()
    assert tracker.grads == _bytes(weight)


def test_fake_tensors_give_the_bytes_of_real_ones():
    """The peak and what is left are the same; fake tensors may take a few more (decomposed) ops."""
    from siglip_lightning import VisionTower

    def run(fake: bool) -> tuple:
        import contextlib

        with _compat.fake_tensor_mode() if fake else contextlib.nullcontext():
            torch.manual_seed(0)
            tower = VisionTower(image_size=16, patch_size=4, width=32, layers=2, heads=4)
            x = torch.randn(8, 3, 16, 16)
            tracker = LiveBytes()
            hooks = tracker.watch_gradients(tower.parameters())
            with tracker:
                tower(x).sum().backward()
            for hook in hooks:
                hook.remove()
            totals = [other + grads for _, other, grads in tracker.timeline]
            return max(totals), tracker.other, tracker.grads

    real = run(False)
    assert run(True) == real
    assert real[2] == sum(p.numel() * p.element_size() for p in VisionTower(16, 4, 32, 2, 4).parameters())
