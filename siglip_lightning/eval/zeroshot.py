"""Zero-shot classification: class names x prompt templates -> one text embedding per class -> top-1/top-5."""
from __future__ import annotations

import itertools
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import datasets
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torchmetrics.classification import MulticlassAccuracy

from siglip_lightning.errors import UserInputError
from siglip_lightning.eval.base import EvalCallback, EvalContext
from siglip_lightning.ranks import rank_and_world
from siglip_lightning.eval.class_order import check_class_order
from siglip_lightning.eval.gather import gather_rows
from siglip_lightning.eval.loading import embed_owned_images, embed_owned_texts, open_eval_split
from siglip_lightning.eval.prompts import canonicalize_text, prompts, resolve_class_names, resolve_templates

BUILTIN = "builtin"

@torch.no_grad()
def class_embeddings(module: LightningModule, tokenizer, class_names: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256) -> torch.Tensor:
    """``[num_classes, d]``: each class's prompts embedded, averaged, and re-normalised (CLIP).

    Under DDP each rank embeds a disjoint share of the prompts and the shares are gathered.
    """
    rank, world = rank_and_world()
    texts = prompts(class_names, templates)
    positions, features = embed_owned_texts(module, tokenizer, texts, rank, world, batch_size)
    embedded = gather_rows(positions.to(features.device), features, len(texts))
    per_class = embedded.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


def topk_accuracy(image_features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor,
                  ks: Sequence[int] = (1, 5), chunk: int = 4096) -> Dict[str, float]:
    """``{"top1": ..., "top5": ...}``: is the label among the K classes with the highest score?

    Under DDP each rank passes its own images; torchmetrics sums the counts over ranks in
    ``compute()``, so every image counts once. Every rank must call this (it is a collective).
    """
    num_classes = classifier.shape[0]
    if num_classes < 2:
        raise UserInputError(f"zero-shot classification needs at least 2 classes, got {num_classes}")
    meters = {k: MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average="micro").to(classifier.device)
              for k in ks}
    # Scored a chunk of images at a time: 50k images x 1000 classes at once would be 200 MB of logits
    # (plus torchmetrics' copies) for counts that add up chunk by chunk.
    for start in range(0, labels.numel(), chunk):
        logits = image_features[start:start + chunk].float() @ classifier.float().T
        for meter in meters.values():
            meter.update(logits, labels[start:start + chunk])
    return {f"top{k}": float(meter.compute()) for k, meter in meters.items()}


class LabelledImages:
    """Re-iterable ``(position, raw image, label)`` of a labelled image set (images left undecoded)."""

    def __init__(self, stream: datasets.IterableDataset, image_column: str, label_column: str,
                 max_images: Optional[int], relabel: Optional[List[int]] = None) -> None:
        self.stream, self.image_column, self.label_column, self.max_images = stream, image_column, label_column, max_images
        self.relabel = relabel

    def __iter__(self) -> Iterator[Tuple[int, object, int]]:
        for position, example in enumerate(itertools.islice(self.stream, self.max_images)):
            label = int(example[self.label_column])
            yield position, example[self.image_column], self.relabel[label] if self.relabel else label


def numbered_labels(feature) -> Optional[List[int]]:
    """For folders named ``0 .. n-1`` (ImageNet-v2's layout): the number of each ClassLabel index.

    An imagefolder labels its folders in string order ("0", "1", "10", "100", ...); scoring those
    indices against class names in numeric order would be a shuffled answer key.
    """
    if not isinstance(feature, datasets.ClassLabel):
        return None
    names = feature.names
    if not all(name.isdigit() for name in names) or sorted(int(n) for n in names) != list(range(len(names))):
        return None
    return [int(name) for name in names]


class ZeroShotClassification(EvalCallback):
    """Top-1 / top-5 zero-shot accuracy, logged as ``zeroshot/<name>/top1`` and ``.../top5``.

    Use one instance per data set (each with its own ``name``) to evaluate several at once.

    Args:
        name: label used in the logged metric names.
        path: a labelled image set: a folder with one sub-folder per class (imagefolder, e.g. an
            ImageNet val folder with one folder per WordNet id), a parquet/json/... folder or file,
            or a Hugging Face dataset name. ``None`` uses the built-in shapes zero-shot set of the
            datamodule.
        class_names: class names in label order: a list, ``imagenet`` (the 1000 ImageNet-1k
            names), or a .txt (one per line) / .json file; ``None`` reads them from the label
            column's ``ClassLabel`` feature (for an imagefolder: the sub-folder names).
        templates: prompt templates with one ``{}``: a list, ``openai`` (CLIP's 80), ``simple``
            (CLIP's 7), ``plain`` (the bare name) or a file; ``None``: the built-in set's own, else ``a {}``.
        image_column: column holding the images.
        label_column: column holding integer labels.
        split: split of ``path`` to evaluate; ``None``: the only split, else test / validation / val.
        batch_size: images (and prompts) per forward pass.
        max_images: evaluate only the first this many images (``None``: all).
        num_workers: DataLoader workers decoding images.
        every_n_steps: also evaluate every this many training steps (``None``: only at validation).
        at_validation: evaluate at the end of each validation loop (fit and ``validate``).
        check_class_order: stop when ``class_names`` look like a reordering of the data set's own
            label names (``ClassLabel`` / imagefolder folders): the scores would be wrong.
        canonicalize: lower-case class names and templates and drop their punctuation, as
            big_vision's evaluators do (``None``: on for ``templates: clip_paper``, else off).
        patch_budget: NaFlex models only: evaluate at this patch budget (default: ``data.naflex.eval_budget``).
    """

    prefix = "zeroshot"

    def __init__(self, name: str = "builtin", path: Optional[str] = None,
                 class_names: Union[str, List[str], None] = None, templates: Union[str, List[str], None] = None,
                 image_column: str = "image", label_column: str = "label", split: Optional[str] = None,
                 batch_size: int = 256, max_images: Optional[int] = None, num_workers: int = 0,
                 every_n_steps: Optional[int] = None, at_validation: bool = True,
                 check_class_order: bool = True, patch_budget: Optional[int] = None,
                 canonicalize: Optional[bool] = None) -> None:
        super().__init__(name, every_n_steps, at_validation, patch_budget)
        self.path, self.split = path, split
        # Resolve the short names now, so that a typo fails when the config is read.
        self.class_names = resolve_class_names(class_names)
        self.templates = resolve_templates(templates) if templates is not None else None
        self.image_column, self.label_column = image_column, label_column
        self.batch_size, self.max_images, self.num_workers = batch_size, max_images, num_workers
        self.check_class_order = check_class_order
        self.canonicalize = canonicalize if canonicalize is not None else templates == "clip_paper"

    def _where(self) -> str:
        return f"ZeroShotClassification {self.name!r}"

    def resolve(self, datamodule) -> Tuple[datasets.IterableDataset, List[str], List[str], Optional[List[int]]]:
        """The stream to evaluate, its class names, the templates, and the label of each ClassLabel
        index when the folders are named by their label number (else None)."""
        path, class_names, templates = self.path, self.class_names, self.templates
        if path in (None, BUILTIN):
            builtin = getattr(datamodule, "builtin_zeroshot", lambda: None)()
            if builtin is None:
                raise UserInputError(f"{self._where()}: no path given and the data is not the built-in set; set "
                                     "the callback's init_args.path")
            path, default_names, default_templates = builtin
            class_names, templates = class_names or default_names, templates or default_templates
        stream = open_eval_split(path, self.split, self._where())
        features = stream.features or {}
        for column in (self.image_column, self.label_column):
            if features and column not in features:
                raise UserInputError(f"{self._where()}: column {column!r} not in {path!r}; it has {list(features)}")
        label_feature = features.get(self.label_column)
        numbered = numbered_labels(label_feature)
        if class_names is None:
            if not isinstance(label_feature, datasets.ClassLabel):
                raise UserInputError(f"{self._where()}: give class_names; the label column {self.label_column!r} "
                                     "does not carry them")
            class_names = label_feature.names
        elif isinstance(label_feature, datasets.ClassLabel) and label_feature.num_classes != len(class_names):
            raise UserInputError(f"{self._where()}: {len(class_names)} class_names given but {path!r} has "
                                 f"{label_feature.num_classes} classes")
        elif isinstance(label_feature, datasets.ClassLabel) and self.check_class_order and numbered is None:
            check_class_order(class_names, label_feature.names, self._where())
        if isinstance(features.get(self.image_column), datasets.Image):
            stream = stream.cast_column(self.image_column, datasets.Image(decode=False))
        templates = resolve_templates(templates)
        if self.canonicalize:  # big_vision's protocol: names and templates lower-cased, punctuation dropped
            class_names = [canonicalize_text(name, keep=",") for name in class_names]
            templates = [canonicalize_text(template, keep="{}") for template in templates]
        return stream, list(class_names), templates, numbered

    def measure(self, module: LightningModule, context: EvalContext) -> Dict[str, float]:
        stream, class_names, templates, numbered = self.resolve(context.datamodule)
        rank, world = rank_and_world()
        classifier = class_embeddings(module, context.tokenizer, class_names, templates, self.batch_size)
        source = LabelledImages(stream, self.image_column, self.label_column, self.max_images, numbered)
        _, features, labels = embed_owned_images(module, source, context.transform, rank, world, self.batch_size,
                                                 self.num_workers, self._where(), context.precision)
        num_classes = len(class_names)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise UserInputError(f"{self._where()}: labels must be in 0..{num_classes - 1}, found "
                                 f"{int(labels.min())}..{int(labels.max())}")
        metrics = topk_accuracy(features.to(classifier.device), labels.to(classifier.device), classifier)
        return {**metrics, "chance": 1.0 / num_classes}

    def summary(self, metrics: Dict[str, float]) -> str:
        return f"top-1 {metrics['top1']:.3f}, top-5 {metrics['top5']:.3f} (chance {metrics['chance']:.3f})"
