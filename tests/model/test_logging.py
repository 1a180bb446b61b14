"""What a fit writes to its logger: t, b, lr and samples/s on every step the logger writes."""
import csv

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from siglip_lightning import SigLIPModule
from siglip_lightning.towers import TextTower, VisionTower


def test_every_written_step_has_every_scalar(tmp_path):
    torch.manual_seed(0)
    module = SigLIPModule(VisionTower(image_size=16, width=32, heads=2), TextTower(vocab_size=32, context_length=8,
                          width=32, heads=2, output_dim=32), warmup_steps=2, total_steps=9)
    batches = [{"image": torch.randn(4, 3, 16, 16), "text": torch.randint(0, 32, (4, 8))} for _ in range(9)]
    trainer = L.Trainer(accelerator="cpu", max_steps=9, log_every_n_steps=3, logger=CSVLogger(tmp_path),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    written = [row for row in rows if row.get("train/loss")]
    # steps 2, 5, 8 (log_every_n_steps) are written, each with all scalars
    assert [int(row["step"]) for row in written] == [2, 5, 8]
    for row in written:
        for key in ("train/t", "train/b", "train/lr", "train/samples_per_sec"):
            assert row.get(key) and float(row[key]) == float(row[key]), (key, row)
        assert float(row["train/samples_per_sec"]) > 0
