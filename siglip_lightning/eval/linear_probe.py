"""A linear classifier fitted on frozen features (full-batch L-BFGS on the softmax cross-entropy), and its
held-out accuracy beside the majority-class baseline: the dense probe's readout (eval/dense_probe.py)."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F


def fit_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 100,
               weight_decay: float = 1e-4) -> torch.nn.Linear:
    """A ``Linear(d, num_classes)`` minimising cross-entropy + ``weight_decay`` * |W|^2 on standardised features
    (the standardisation is folded into the returned layer, so it takes the raw features)."""
    # Evaluation runs under no_grad, and `siglip-lightning validate` under inference_mode, whose tensors
    # autograd refuses: leave both, and fit on plain copies.
    with torch.inference_mode(False), torch.enable_grad():
        x, labels = features.detach().float().clone(), labels.clone()
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        x = (x - mean) / std
        layer = torch.nn.Linear(x.shape[1], num_classes)
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
        optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=steps, history_size=20,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(layer(x), labels) + weight_decay * layer.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():  # fold (x - mean) / std into the weights
            layer.weight.div_(std)
            layer.bias.sub_(layer.weight @ mean)
    return layer


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   num_classes: int, steps: int = 100) -> Dict[str, float]:
    """``{"acc": held-out accuracy of the fitted classifier, "majority": that of always answering the
    training split's most frequent class}``."""
    layer = fit_linear(train_x, train_y, num_classes, steps)
    with torch.no_grad():
        predicted = layer(test_x.float()).argmax(1).to(test_y.device)
    majority = torch.bincount(train_y, minlength=num_classes).argmax()
    return {"acc": float((predicted == test_y).float().mean()), "majority": float((test_y == majority).float().mean())}
