"""LightningDataModule that streams any Hugging Face image-text dataset."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import lightning as L

from siglip_lightning.data.corruption import Corruption
from siglip_lightning.data.loader import StreamLoader
from siglip_lightning.data.naflex import NaFlexSpec, naflex_pieces
from siglip_lightning.data.mixture import (
    MixedStream, SourceSpec, check_weights, resolve_columns, sample_captions, source_specs,
)
from siglip_lightning.data.resume import StreamProgress, gather_from_ranks
from siglip_lightning.data.sources import caption_strings, image_root, open_undecoded_splits
from siglip_lightning.data.stream import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, PairStream, collate_pairs
from siglip_lightning.data.synthetic import ShapesSpec, default_data_root, ensure_shapes_dataset
from siglip_lightning.text.choice import (
    TRAINED_TYPES, check_tokenizer_type, make_tokenizer, train_tokenizer, trained_tokenizer_file,
)
from siglip_lightning.data.transforms import ImageTransform
from siglip_lightning import _compat
from siglip_lightning.errors import UserInputError

BUILTIN = "builtin"


class ImageTextDataModule(L.LightningDataModule):
    """Streams image-text pairs, shards them across nodes and workers, tokenises and batches them.

    Args:
        path: ``builtin`` (generated shapes data), a local folder / file / glob (parquet,
            imagefolder, webdataset ``.tar``, json, csv), brace-expanded shards
            (``train-{00000..00099}.tar``, several patterns joined by ``::``), remote shards
            (``s3://``, ``gs://``, ``https://`` ``.tar`` / ``.parquet``), a Karpathy split json
            (``dataset_coco.json``: train + restval) or a Hugging Face Hub dataset name.
        sources: a weighted mixture instead of ``path``: a list of ``{path, weight, image_column,
            text_column, id_column}`` (see docs/DATA.md).
        image_column: column holding images; by default the first of image, img, jpg, png, ...
        text_column: column holding captions (a string or a list); by default text, caption, txt, ...;
            or a dotted path into a json column (``json.caption``), or ``{field: probability}``.
        batch_size: pairs per device per step.
        num_workers: DataLoader worker processes per device.
        image_size: side of the images fed to the model (must match the image tower).
        image_mean: per-channel mean after scaling to [0, 1] (0.5 maps to [-1, 1], as SigLIP).
        image_std: per-channel std.
        augment: random crop and flip on training images.
        image_resample: ``bilinear`` or ``bicubic`` (a released checkpoint's processor says which).
        image_resize_backend: ``pil`` (fast), ``pil_exact`` (as transformers 4), ``open_clip`` or
            ``torchvision`` (as transformers 5 image processors): see ``ImageTransform``.
        context_length: tokens per caption (must match the text tower).
        tokenizer_type: ``sentencepiece`` (SigLIP's), ``gemma`` (SigLIP 2's conventions: pad id 0, EOS,
            no BOS, over a SentencePiece model with Gemma's special ids), ``clip`` (open_clip's CLIP BPE,
            49408 tokens), ``hf`` (the tokenizer of the Hugging Face folder ``tokenizer_path``) or
            ``open_clip`` (that of the open_clip model named by ``tokenizer_path``): the last two are set
            by ``--pretrained``. See ``text/choice.py``.
        tokenizer_path: a SentencePiece ``.model``; ``None`` trains one on the training captions.
        vocab_size: vocabulary size when training the tokenizer (must not exceed the text tower's).
        tokenizer_train_samples: captions read to train the tokenizer.
        shuffle_buffer: raw examples in each worker's shuffle buffer (0 disables shuffling of
            shards and examples).
        seed: shuffling seed (combined with the epoch).
        val_fraction: hold out this fraction of the training split for validation (every k-th
            example of each shard, k = round(1/val_fraction)); 0 uses the dataset's own
            validation/val/test split if it has one.
        id_column: column passed through as ``batch["id"]``; by default ``id`` or ``__key__`` when present.
        min_image_side: images with a smaller side are skipped (counted as ``image_too_small``).
        max_image_pixels: images with more pixels are skipped before decoding (``image_too_large``).
        max_skip_fraction: stop with an error when a worker skips more than this fraction of the
            (at least 50) samples it has read: the columns are wrong or the data is broken.
        builtin: knobs of the generated dataset when ``path`` is ``builtin``.
        cache_dir: where generated data and trained tokenizers go (default ~/.cache/siglip-lightning).
        storage_options: fsspec options for remote shards (endpoint, credentials, ...).
        read_retries: failed reads in a row of one remote shard before the run stops.
        retry_backoff: seconds before the first retry of a remote read (doubled at each further one).
        naflex: cut images at their own aspect ratio into patches within a patch budget, for a
            ``NaFlexVisionTower`` (SigLIP 2); ``None`` resizes to ``image_size`` squares. See docs/NAFLEX.md.
        corruption: corrupt training images / texts / pairings with probability p (paper Fig. 7);
            see ``data/corruption.py``.
        regions_column: a column of regions (boxes with their captions) for LocCa's referring
            expressions and grounded captioning (``data/regions.py``); the built-in data writes
            ``regions`` with ``builtin.regions: true``. Boxes stay true only without ``augment``.
    """

    def __init__(
        self,
        path: str = BUILTIN,
        sources: Optional[List[SourceSpec]] = None,
        image_column: Optional[str] = None,
        text_column: Union[str, Dict[str, float], None] = None,
        batch_size: int = 128,
        num_workers: int = 1,
        image_size: int = 32,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        augment: bool = False,
        image_resample: Literal["bilinear", "bicubic"] = "bilinear",
        image_resize_backend: Literal["pil", "pil_exact", "open_clip", "torchvision"] = "pil",
        context_length: int = 16,
        tokenizer_type: Literal["sentencepiece", "gemma", "clip", "hf", "open_clip"] = "sentencepiece",
        tokenizer_path: Optional[str] = None,
        vocab_size: int = 1024,
        tokenizer_train_samples: int = 100_000,
        shuffle_buffer: int = 4096,
        seed: int = 0,
        val_fraction: float = 0.0,
        id_column: Optional[str] = None,
        min_image_side: int = MIN_IMAGE_SIDE,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_skip_fraction: float = 0.5,
        builtin: ShapesSpec = ShapesSpec(),
        cache_dir: Optional[str] = None,
        storage_options: Optional[Dict[str, Any]] = None,
        read_retries: int = 5,
        retry_backoff: float = 1.0,
        naflex: Optional[NaFlexSpec] = None,
        corruption: Corruption = Corruption(),
        regions_column: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.path = path
        self.builtin_spec = builtin if isinstance(builtin, ShapesSpec) else ShapesSpec(**builtin)
        self.cache_dir = Path(cache_dir) if cache_dir else default_data_root()
        self.corruption = corruption if isinstance(corruption, Corruption) else Corruption(**corruption)
        self.specs = source_specs(path, sources, image_column, text_column, id_column, BUILTIN)
        resize = dict(resample=image_resample, resize_backend=image_resize_backend)
        self.image_transform = ImageTransform(image_size, image_mean, image_std, augment=augment, **resize)
        self.eval_transform = ImageTransform(image_size, image_mean, image_std, augment=False, **resize)
        self.collates = (collate_pairs, collate_pairs)
        if naflex is not None:  # SigLIP 2's NaFlex: patches at the image's own aspect ratio (data/naflex.py)
            naflex = naflex if isinstance(naflex, NaFlexSpec) else NaFlexSpec(**naflex)
            self.image_transform, self.eval_transform, *self.collates = naflex_pieces(
                naflex, image_mean, image_std, augment, seed)
        if regions_column is not None and (augment or naflex is not None):
            raise UserInputError("data.regions_column needs data.augment false and no data.naflex: crops, flips and "
                                 "NaFlex batches do not carry the boxes along")
        if not 0.0 <= val_fraction <= 0.5:
            raise UserInputError(f"data.val_fraction must be in [0, 0.5], got {val_fraction}")
        check_tokenizer_type(tokenizer_type, tokenizer_path)
        self.tokenizer: Optional[Any] = None
        self._splits: Dict[int, Any] = {}
        self.progress = StreamProgress()
        self.read_retries = 0  # of remote reads on this rank, as reported by the batches

    # --- where things live -------------------------------------------------------------------
    @property
    def builtin_root(self) -> Path:
        return ensure_shapes_dataset(self.builtin_spec, self.cache_dir / "builtin")

    def _resolved_path(self, index: int = 0) -> str:
        path = self.specs[index].path
        return str(self.builtin_root / "pairs") if path == BUILTIN else path

    def tokenizer_file(self) -> Path:
        if self.hparams.tokenizer_path:
            return Path(self.hparams.tokenizer_path).expanduser()
        where = [[self._resolved_path(i), s.text_column, s.weight] for i, s in enumerate(self.specs)]
        if len(self.specs) == 1:
            where = [self._resolved_path(), self.specs[0].text_column]
        return trained_tokenizer_file(self.cache_dir, self.hparams.tokenizer_type, self.hparams.vocab_size,
                                      [*where, self.hparams.tokenizer_train_samples])

    # --- Lightning hooks ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Runs on one process per node: generate the built-in data, train the tokenizer."""
        if any(s.path == BUILTIN for s in self.specs):
            _ = self.builtin_root
        model_file = self.tokenizer_file()
        if self.hparams.tokenizer_type in TRAINED_TYPES and not model_file.exists():
            if self.hparams.tokenizer_path:
                raise UserInputError(f"tokenizer model file not found: {model_file} (data.tokenizer_path)")
            weights = check_weights([s.weight for s in self.specs])
            captions = itertools.chain.from_iterable(
                sample_captions(self._open(i)["train"], self.specs[i], round(w * self.hparams.tokenizer_train_samples))
                for i, w in enumerate(weights))
            strings = (c for c in caption_strings(captions) if isinstance(c, str))  # json fields may hold anything
            train_tokenizer(self.hparams.tokenizer_type, strings, model_file, self.hparams.vocab_size)

    def setup_tokenizer(self) -> Any:
        """The run's tokenizer, built once (``siglip-lightning evaluate`` needs it without the data)."""
        if self.tokenizer is None:
            self.tokenizer = make_tokenizer(self.hparams.tokenizer_type, self.hparams.tokenizer_path,
                                            self.tokenizer_file(), self.hparams.context_length)
        return self.tokenizer

    def setup(self, stage: Optional[str] = None) -> None:
        self.setup_tokenizer()
        self.columns = [resolve_columns(self._open(i), spec) for i, spec in enumerate(self.specs)]
        self.image_column, captions, self.id_column = self.columns[0]
        self.text_column = captions.spec if isinstance(captions.spec, str) else captions

    def _open(self, index: int = 0):
        if index not in self._splits:
            self._splits[index] = open_undecoded_splits(self._resolved_path(index), self.hparams.storage_options,
                                                        self.hparams.read_retries, self.hparams.retry_backoff)
        return self._splits[index]

    def raw_split_names(self) -> list:
        """The splits of the dataset (opened, not decoded)."""
        return sorted(self._open())

    def raw_split(self, name: str):
        """Split ``name`` as a streaming dataset of raw rows in stored order (images not decoded)."""
        return self._open()[name]

    def _rank(self):
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _holdout(self, train: bool):
        if self.hparams.val_fraction <= 0:
            return None
        return max(2, round(1 / self.hparams.val_fraction)), not train

    def _stream(self, split: str, train: bool) -> PairStream:
        if len(self.specs) == 1:
            return self._part(split, train, 0)
        rank, world = self._rank()
        parts = [self._part(split, train, i) for i in range(len(self.specs))]
        return MixedStream(parts, [s.weight for s in self.specs], self.hparams.seed, rank, world,
                           self.hparams.max_skip_fraction)

    def _part(self, split: str, train: bool, index: int) -> PairStream:
        rank, world = self._rank()
        image_column, captions, id_column = self.columns[index]
        return PairStream(
            self._open(index)[split], image_column, captions,
            self.image_transform if train else self.eval_transform, self.tokenizer, self.hparams.seed,
            shuffle_buffer=self.hparams.shuffle_buffer if train else 0, rank=rank, world_size=world,
            holdout=self._holdout(train) if split == "train" else None, id_column=id_column,
            min_image_side=self.hparams.min_image_side, max_image_pixels=self.hparams.max_image_pixels,
            max_skip_fraction=self.hparams.max_skip_fraction, image_root=image_root(self._resolved_path(index)),
            regions_column=self.hparams.regions_column,
        )

    def _loader(self, split: str, train: bool) -> StreamLoader:
        stream = self._stream(split, train)
        return StreamLoader(
            stream,
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            collate_fn=self.collates[0 if train else 1],
            drop_last=train,
            persistent_workers=False,  # fresh workers each pass pick up the new epoch and resume point
            epoch_fn=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
            start_fn=(lambda epoch: self._start_epoch(epoch, stream)) if train else None,
            require_batches=train,
        )

    def train_dataloader(self) -> StreamLoader:
        return self._loader("train", train=True)

    def val_dataloader(self):
        if self.hparams.val_fraction > 0:
            return self._loader("train", train=False)
        if len(self.specs) > 1:
            return []  # a mixture validates on its held-out examples only (data.val_fraction)
        for name in ("validation", "val", "test"):
            if name in self._open():
                return self._loader(name, train=False)
        return []

    # --- exact (and elastic) mid-epoch resume: siglip_lightning/data/resume.py -------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        stream = batch.pop("_stream", None) if isinstance(batch, dict) else None
        retries = batch.pop("read_retries", 0) if isinstance(batch, dict) else 0
        if stream is not None and self.trainer is not None and self.trainer.training:
            self.progress.record(*stream)
        if retries and self.trainer is not None:
            self.read_retries += int(retries)
            if self.trainer.logger is not None:
                self.trainer.logger.log_metrics({"data/read_retries": self.read_retries}, step=self.trainer.global_step)
        if self.corruption.active and self.trainer is not None and self.trainer.training:
            batch = self.corruption(batch, self.trainer.global_step, self.tokenizer.vocab_size, self.tokenizer.eos_id)
        return batch

    def _start_epoch(self, epoch: int, stream: PairStream):
        rank, world = self._rank()
        return self.progress.start_epoch(epoch, stream, rank, world, max(1, self.hparams.num_workers))

    def _epoch_consumed(self) -> bool:
        """True when Lightning will end this epoch after the current batch (e.g. limit_train_batches),
        although the stream itself is not exhausted: a resume must then start the next epoch afresh."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return False
        limit = trainer.num_training_batches
        done = _compat.batches_started_this_epoch(trainer)
        return limit != float("inf") and done >= limit

    def state_dict(self) -> Dict[str, Any]:
        return self.progress.state_dict(self._epoch_consumed(), gather_from_ranks)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.progress.load_state_dict(state)

    # --- for evaluators ----------------------------------------------------------------------
    def builtin_zeroshot(self):
        """(parquet folder, class names, templates) of the built-in zero-shot set, or None."""
        if self.specs[0].path != BUILTIN:
            return None
        meta = json.loads((self.builtin_root / "zeroshot_classes.json").read_text())
        return str(self.builtin_root / "zeroshot"), meta["class_names"], meta["templates"]
