"""LightningDataModule that streams any Hugging Face image-text dataset."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Sequence

import datasets
import lightning as L
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn

from siglip_lightning.data.corruption import Corruption
from siglip_lightning.data.loader import StreamLoader
from siglip_lightning.data.sources import (
    ID_COLUMNS, IMAGE_COLUMNS, TEXT_COLUMNS, caption_strings, column_names, open_splits, pick_column,
)
from siglip_lightning.data.stream import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, PairStream, collate_pairs
from siglip_lightning.data.synthetic import ShapesSpec, default_data_root, ensure_shapes_dataset
from siglip_lightning.data.tokenizer import ClipTokenizer, SentencePieceTokenizer, train_sentencepiece
from siglip_lightning.data.transforms import ImageTransform
from siglip_lightning import _compat
from siglip_lightning.ranks import is_distributed
from siglip_lightning.errors import UserInputError

BUILTIN = "builtin"


class ImageTextDataModule(L.LightningDataModule):
    """Streams image-text pairs, shards them across nodes and workers, tokenises and batches them.

    Args:
        path: ``builtin`` (generated shapes data), a local folder / file / glob (parquet,
            imagefolder, webdataset ``.tar``, json, csv) or a Hugging Face Hub dataset name.
        image_column: column holding images; by default the first of image, img, jpg, png, ...
        text_column: column holding captions (a string or a list); by default text, caption, txt, ...
        batch_size: pairs per device per step.
        num_workers: DataLoader worker processes per device.
        image_size: side of the images fed to the model (must match the image tower).
        image_mean: per-channel mean after scaling to [0, 1] (0.5 maps to [-1, 1], as SigLIP).
        image_std: per-channel std.
        augment: random crop and flip on training images.
        context_length: tokens per caption (must match the text tower).
        tokenizer_type: ``sentencepiece`` (SigLIP's) or ``clip`` (open_clip's CLIP BPE, 49408 tokens).
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
        corruption: corrupt training images / texts / pairings with probability p (paper Fig. 7);
            see ``data/corruption.py``.
    """

    def __init__(
        self,
        path: str = BUILTIN,
        image_column: Optional[str] = None,
        text_column: Optional[str] = None,
        batch_size: int = 128,
        num_workers: int = 1,
        image_size: int = 32,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        augment: bool = False,
        context_length: int = 16,
        tokenizer_type: Literal["sentencepiece", "clip"] = "sentencepiece",
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
        corruption: Corruption = Corruption(),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.path = path
        self.builtin_spec = builtin if isinstance(builtin, ShapesSpec) else ShapesSpec(**builtin)
        self.cache_dir = Path(cache_dir) if cache_dir else default_data_root()
        self.corruption = corruption if isinstance(corruption, Corruption) else Corruption(**corruption)
        if path != BUILTIN:
            self._check_local_path(path)
        self.image_transform = ImageTransform(image_size, image_mean, image_std, augment=augment)
        self.eval_transform = ImageTransform(image_size, image_mean, image_std, augment=False)
        if not 0.0 <= val_fraction <= 0.5:
            raise UserInputError(f"data.val_fraction must be in [0, 0.5], got {val_fraction}")
        if tokenizer_type not in ("sentencepiece", "clip"):
            raise UserInputError(f"data.tokenizer_type must be 'sentencepiece' or 'clip', got {tokenizer_type!r}")
        self.tokenizer: Optional[Any] = None
        self._splits = None
        self._progress: Dict[str, Any] = {"epoch": -1, "positions": {}, "last_worker": -1}
        self._pending: Optional[Dict[str, Any]] = None

    @staticmethod
    def _check_local_path(path: str) -> None:
        expanded = Path(path).expanduser()
        if str(path).startswith((".", "/", "~")) and not any(c in path for c in "*?[") and not expanded.exists():
            raise UserInputError(f"data path not found: {path!r} (data.path)")

    # --- where things live -------------------------------------------------------------------
    @property
    def builtin_root(self) -> Path:
        return ensure_shapes_dataset(self.builtin_spec, self.cache_dir / "builtin")

    def _resolved_path(self) -> str:
        return str(self.builtin_root / "pairs") if self.path == BUILTIN else self.path

    def tokenizer_file(self) -> Path:
        if self.hparams.tokenizer_path:
            return Path(self.hparams.tokenizer_path).expanduser()
        key = json.dumps([self._resolved_path(), self.hparams.text_column, self.hparams.vocab_size,
                          self.hparams.tokenizer_train_samples])
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        return self.cache_dir / "tokenizers" / f"spm-{self.hparams.vocab_size}-{digest}.model"

    # --- Lightning hooks ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Runs on one process per node: generate the built-in data, train the tokenizer."""
        if self.path == BUILTIN:
            _ = self.builtin_root
        model_file = self.tokenizer_file()
        if self.hparams.tokenizer_type == "sentencepiece" and not model_file.exists():
            if self.hparams.tokenizer_path:
                raise UserInputError(f"tokenizer model file not found: {model_file} (data.tokenizer_path)")
            train = self._open()["train"]
            text_column = pick_column(column_names(train), self.hparams.text_column, TEXT_COLUMNS,
                                      "text", "data.text_column")
            rows = itertools.islice(train.select_columns([text_column]), self.hparams.tokenizer_train_samples)
            captions = (ex[text_column] for ex in rows)  # the text column only: no image bytes read into Python
            train_sentencepiece(caption_strings(captions), model_file, self.hparams.vocab_size)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.tokenizer is None:
            if self.hparams.tokenizer_type == "clip":
                self.tokenizer = ClipTokenizer(self.hparams.context_length)
            else:
                self.tokenizer = SentencePieceTokenizer(self.tokenizer_file(), self.hparams.context_length)
        splits = self._open()
        if "train" not in splits:
            raise UserInputError(f"no train split in {self.path!r}: found {sorted(splits)}")
        columns = column_names(splits["train"])
        self.image_column = pick_column(columns, self.hparams.image_column, IMAGE_COLUMNS, "image", "data.image_column")
        self.text_column = pick_column(columns, self.hparams.text_column, TEXT_COLUMNS, "text", "data.text_column")
        self.id_column = self.hparams.id_column
        if self.id_column is not None:
            pick_column(columns, self.id_column, (), "id", "data.id_column")
        else:
            self.id_column = next((c for c in ID_COLUMNS if c in columns), None)

    def _open(self):
        if self._splits is None:
            splits = open_splits(self._resolved_path())
            # Decode images ourselves, so that a bad file is a counted skip, not a crash.
            for name, stream in splits.items():
                features = stream.features or {}
                for column, feature in features.items():
                    if isinstance(feature, datasets.Image):
                        splits[name] = splits[name].cast_column(column, datasets.Image(decode=False))
            self._splits = splits
        return self._splits

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
        rank, world = self._rank()
        return PairStream(
            self._open()[split], self.image_column, self.text_column,
            self.image_transform if train else self.eval_transform, self.tokenizer, self.hparams.seed,
            shuffle_buffer=self.hparams.shuffle_buffer if train else 0, rank=rank, world_size=world,
            holdout=self._holdout(train) if split == "train" else None, id_column=self.id_column,
            min_image_side=self.hparams.min_image_side, max_image_pixels=self.hparams.max_image_pixels,
            max_skip_fraction=self.hparams.max_skip_fraction, image_root=self._image_root(),
        )

    def _image_root(self) -> Optional[str]:
        """Where relative image paths of a local jsonl/csv point: the folder of the file(s)."""
        local = os.path.expanduser(self._resolved_path())
        if os.path.isdir(local):
            return local
        parent = os.path.dirname(local)
        return parent if parent and not any(c in parent for c in "*?[") and os.path.isdir(parent) else None

    def _loader(self, split: str, train: bool) -> StreamLoader:
        return StreamLoader(
            self._stream(split, train),
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            collate_fn=collate_pairs,
            drop_last=train,
            persistent_workers=False,  # fresh workers each pass pick up the new epoch and resume point
            epoch_fn=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
            start_fn=self._start_epoch if train else None,
            require_batches=train,
        )

    def train_dataloader(self) -> StreamLoader:
        return self._loader("train", train=True)

    def val_dataloader(self):
        if self.hparams.val_fraction > 0:
            return self._loader("train", train=False)
        for name in ("validation", "val", "test"):
            if name in self._open():
                return self._loader(name, train=False)
        return []

    # --- exact mid-epoch resume ------------------------------------------------------------------
    # Each training batch carries (logical worker, samples of that worker's order consumed). The
    # position is recorded when the batch reaches the model (not when the loader prefetches it),
    # gathered from all ranks into the checkpoint, and replayed by the workers on resume.
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        stream = batch.pop("_stream", None) if isinstance(batch, dict) else None
        if stream is not None and self.trainer is not None and self.trainer.training:
            worker, position = stream
            self._progress["positions"][int(worker)] = int(position)
            self._progress["last_worker"] = int(worker)
        if self.corruption.active and self.trainer is not None and self.trainer.training:
            batch = self.corruption(batch, self.trainer.global_step, self.tokenizer.vocab_size, self.tokenizer.eos_id)
        return batch

    def _start_epoch(self, epoch: int):
        pending, self._pending = self._pending, None
        if pending is not None and pending["epoch"] == epoch and pending["positions"]:
            self._progress = {"epoch": epoch, "positions": dict(pending["positions"]),
                              "last_worker": pending["last_worker"]}
            workers = max(1, self.hparams.num_workers)
            return dict(pending["positions"]), (pending["last_worker"] + 1) % workers
        self._progress = {"epoch": epoch, "positions": {}, "last_worker": -1}
        return {}, 0

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
        mine = {"epoch": self._progress["epoch"], "positions": dict(self._progress["positions"]),
                "last_worker": self._progress["last_worker"]}
        if self._epoch_consumed():
            mine = {"epoch": self._progress["epoch"] + 1, "positions": {}, "last_worker": -1}
        rank, world = self._rank()
        ranks = [mine]
        if world > 1 and is_distributed():
            ranks = [None] * world
            dist.all_gather_object(ranks, mine)  # every rank saves; rank 0's file needs all positions
        return {"stream": ranks, "num_workers": max(1, self.hparams.num_workers), "world_size": world}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        rank, world = self._rank()
        workers = max(1, self.hparams.num_workers)
        if "stream" not in state:
            return
        if state.get("world_size") != world or state.get("num_workers") != workers:
            rank_zero_warn(
                f"the checkpoint's data position was saved with world_size={state.get('world_size')} and "
                f"num_workers={state.get('num_workers')}, this run has {world} and {workers}: the interrupted "
                "epoch restarts from its beginning instead of resuming exactly"
            )
            return
        self._pending = state["stream"][rank]

    # --- for evaluators ----------------------------------------------------------------------
    def builtin_zeroshot(self):
        """(parquet folder, class names, templates) of the built-in zero-shot set, or None."""
        if self.path != BUILTIN:
            return None
        meta = json.loads((self.builtin_root / "zeroshot_classes.json").read_text())
        return str(self.builtin_root / "zeroshot"), meta["class_names"], meta["templates"]
