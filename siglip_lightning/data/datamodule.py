"""LightningDataModule that streams any Hugging Face image-text dataset."""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import datasets
import lightning as L
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from siglip_lightning.data.sources import IMAGE_COLUMNS, TEXT_COLUMNS, column_names, open_splits, pick_column
from siglip_lightning.data.stream import PairStream, collate_pairs
from siglip_lightning.data.synthetic import ShapesSpec, default_data_root, ensure_shapes_dataset
from siglip_lightning.data.tokenizer import SentencePieceTokenizer, train_sentencepiece
from siglip_lightning.data.transforms import ImageTransform
from siglip_lightning.errors import UserInputError

BUILTIN = "builtin"


class _EpochAwareLoader(DataLoader):
    """Calls ``set_epoch`` on its iterable dataset at each new pass, since Lightning does not."""

    def __init__(self, *args, epoch_fn: Callable[[], int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_fn = epoch_fn

    def __iter__(self):
        self.dataset.set_epoch(self.epoch_fn())
        return super().__iter__()


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
        tokenizer_path: a SentencePiece ``.model``; ``None`` trains one on the training captions.
        vocab_size: vocabulary size when training the tokenizer (must not exceed the text tower's).
        tokenizer_train_samples: captions read to train the tokenizer.
        shuffle_buffer: examples in the streaming shuffle buffer (0 disables shuffling).
        seed: shuffling seed (combined with the epoch).
        builtin: knobs of the generated dataset when ``path`` is ``builtin``.
        cache_dir: where generated data and trained tokenizers go (default ~/.cache/siglip-lightning).
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
        tokenizer_path: Optional[str] = None,
        vocab_size: int = 1024,
        tokenizer_train_samples: int = 100_000,
        shuffle_buffer: int = 4096,
        seed: int = 0,
        builtin: ShapesSpec = ShapesSpec(),
        cache_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.path = path
        self.builtin_spec = builtin if isinstance(builtin, ShapesSpec) else ShapesSpec(**builtin)
        self.cache_dir = Path(cache_dir) if cache_dir else default_data_root()
        if path != BUILTIN:
            self._check_local_path(path)
        self.image_transform = ImageTransform(image_size, image_mean, image_std, augment=augment)
        self.eval_transform = ImageTransform(image_size, image_mean, image_std, augment=False)
        self.tokenizer: Optional[SentencePieceTokenizer] = None
        self._splits = None

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

    def _tokenizer_file(self) -> Path:
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
        model_file = self._tokenizer_file()
        if not model_file.exists():
            if self.hparams.tokenizer_path:
                raise UserInputError(f"tokenizer model file not found: {model_file} (data.tokenizer_path)")
            train = self._open()["train"]
            text_column = pick_column(column_names(train), self.hparams.text_column, TEXT_COLUMNS,
                                      "text", "data.text_column")
            captions = (ex[text_column] for ex in itertools.islice(train, self.hparams.tokenizer_train_samples))
            flat = (c for cap in captions for c in (cap if isinstance(cap, (list, tuple)) else [cap]))
            train_sentencepiece(flat, model_file, self.hparams.vocab_size)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = SentencePieceTokenizer(self._tokenizer_file(), self.hparams.context_length)
        splits = self._open()
        columns = column_names(splits["train"] if "train" in splits else next(iter(splits.values())))
        self.image_column = pick_column(columns, self.hparams.image_column, IMAGE_COLUMNS, "image", "data.image_column")
        self.text_column = pick_column(columns, self.hparams.text_column, TEXT_COLUMNS, "text", "data.text_column")

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

    def _stream(self, split: str, train: bool) -> PairStream:
        source = self._open()[split]
        if self.trainer is not None and self.trainer.world_size > 1:
            source = split_dataset_by_node(source, self.trainer.global_rank, self.trainer.world_size)
        if train and self.hparams.shuffle_buffer > 0:
            source = source.shuffle(seed=self.hparams.seed, buffer_size=self.hparams.shuffle_buffer)
        transform = self.image_transform if train else self.eval_transform
        return PairStream(source, self.image_column, self.text_column, transform, self.tokenizer, self.hparams.seed)

    def _loader(self, split: str, train: bool) -> DataLoader:
        return _EpochAwareLoader(
            self._stream(split, train),
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            collate_fn=collate_pairs,
            drop_last=train,
            persistent_workers=False,  # fresh workers each epoch pick up the new shuffle epoch
            epoch_fn=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self):
        for name in ("validation", "val", "test"):
            if name in self._open():
                return self._loader(name, train=False)
        return []

    # --- for evaluators ----------------------------------------------------------------------
    def builtin_zeroshot(self):
        """(parquet folder, class names, templates) of the built-in zero-shot set, or None."""
        if self.path != BUILTIN:
            return None
        meta = json.loads((self.builtin_root / "zeroshot_classes.json").read_text())
        return str(self.builtin_root / "zeroshot"), meta["class_names"], meta["templates"]
