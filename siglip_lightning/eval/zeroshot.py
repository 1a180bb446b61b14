"""Zero-shot classification at validation: class names x prompt templates -> class embeddings."""
from __future__ import annotations

from typing import List, Optional, Sequence

import datasets
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.classification import MulticlassAccuracy

from siglip_lightning.data.stream import decode_image
from siglip_lightning.errors import UserInputError


@torch.no_grad()
def class_embeddings(module: LightningModule, tokenizer, class_names: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256) -> torch.Tensor:
    """``[num_classes, d]``: each class's prompts embedded, averaged, and re-normalised (CLIP)."""
    prompts = [template.format(name) for name in class_names for template in templates]
    tokens = tokenizer(prompts).to(module.device)
    embedded = torch.cat([module.encode_text(chunk) for chunk in tokens.split(batch_size)])
    per_class = embedded.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


class ZeroShotClassification(Callback):
    """Top-1 / top-5 zero-shot accuracy, logged as ``zeroshot/<name>/top1`` at each validation.

    Args:
        name: label used in the logged metric names.
        path: a labelled image dataset (any source ``datasets`` reads); ``None`` uses the built-in
            shapes zero-shot set of the datamodule.
        class_names: class names in label order; ``None`` reads them from the label feature.
        templates: prompt templates with one ``{}``; ``None`` uses the dataset's own or ``a {}``.
        image_column: column holding the images.
        label_column: column holding integer labels.
        split: split of ``path`` to evaluate.
        batch_size: images per forward pass.
        max_images: evaluate at most this many images (``None``: all).
    """

    def __init__(self, name: str = "builtin", path: Optional[str] = None, class_names: Optional[List[str]] = None,
                 templates: Optional[List[str]] = None, image_column: str = "image", label_column: str = "label",
                 split: str = "test", batch_size: int = 256, max_images: Optional[int] = None) -> None:
        self.name, self.path, self.split = name, path, split
        self.class_names, self.templates = class_names, templates
        self.image_column, self.label_column = image_column, label_column
        self.batch_size, self.max_images = batch_size, max_images
        self.last_metrics: dict = {}

    def _resolve(self, trainer: Trainer):
        path, class_names, templates = self.path, self.class_names, self.templates
        if path is None:
            builtin = trainer.datamodule.builtin_zeroshot() if trainer.datamodule is not None else None
            if builtin is None:
                raise UserInputError(f"ZeroShotClassification {self.name!r}: no path given and the data is not "
                                     "the built-in set; set the callback's init_args.path")
            path, default_names, default_templates = builtin
            class_names, templates = class_names or default_names, templates or default_templates
        stream = datasets.load_dataset(path, split=self.split, streaming=True)
        if class_names is None:
            feature = (stream.features or {}).get(self.label_column)
            if not isinstance(feature, datasets.ClassLabel):
                raise UserInputError(f"ZeroShotClassification {self.name!r}: give class_names; the label column "
                                     f"{self.label_column!r} does not carry them")
            class_names = feature.names
        if stream.features is not None and self.image_column in stream.features:
            stream = stream.cast_column(self.image_column, datasets.Image(decode=False))
        return stream, list(class_names), list(templates or ["a {}"])

    @torch.no_grad()
    def evaluate(self, trainer: Trainer, module: LightningModule) -> dict:
        stream, class_names, templates = self._resolve(trainer)
        tokenizer, transform = trainer.datamodule.tokenizer, trainer.datamodule.eval_transform
        was_training = module.training
        module.eval()
        classifier = class_embeddings(module, tokenizer, class_names, templates)
        top1 = MulticlassAccuracy(len(class_names), top_k=1, average="micro").to(module.device)
        top5 = MulticlassAccuracy(len(class_names), top_k=min(5, len(class_names)), average="micro").to(module.device)
        images, labels = [], []

        def flush() -> None:
            logits = module.encode_image(torch.stack(images).to(module.device)) @ classifier.T
            target = torch.tensor(labels, device=module.device)
            top1.update(logits, target)
            top5.update(logits, target)
            images.clear()
            labels.clear()

        for count, example in enumerate(stream):
            if self.max_images is not None and count >= self.max_images:
                break
            images.append(transform(decode_image(example[self.image_column])))
            labels.append(int(example[self.label_column]))
            if len(images) == self.batch_size:
                flush()
        if images:
            flush()
        module.train(was_training)
        return {"top1": top1.compute().item(), "top5": top5.compute().item(), "chance": 1.0 / len(class_names)}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = self.evaluate(trainer, pl_module)
        self.last_metrics = metrics
        for key, value in metrics.items():
            pl_module.log(f"zeroshot/{self.name}/{key}", value, rank_zero_only=True)
        rank_zero_info(f"zero-shot {self.name} (step {trainer.global_step}): top-1 {metrics['top1']:.3f}, "
                       f"top-5 {metrics['top5']:.3f} (chance {metrics['chance']:.3f})")
