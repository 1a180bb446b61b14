"""What ``siglip-lightning evaluate --model M`` evaluates: the module, and the datamodule that prepares
its text and images exactly as the model expects.

``M`` is one of:

* a run: a ``.ckpt`` file, or a run folder (Lightning's log folder with ``config.yaml`` and
  ``checkpoints/``, or a folder above one). The run's ``config.yaml`` (found next to the
  checkpoint's folder) rebuilds the towers and the data settings as ``validate --config`` does,
  then the checkpoint's weights are loaded; a lone ``.ckpt`` uses the settings saved inside it.
* a Hugging Face ``SiglipModel`` / ``Siglip2Model`` folder or an open_clip folder: read by the same
  function as ``fit --pretrained`` (``pretrained_settings``), so towers, t', b, tokenizer and image
  preprocessing all come from the folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import yaml

from siglip_lightning.data.datamodule import ImageTextDataModule
from siglip_lightning.errors import UserInputError
from siglip_lightning.model.module import SigLIPModule


@dataclass
class LoadedModel:
    module: SigLIPModule
    datamodule: ImageTextDataModule
    kind: str  # run, hf, siglip2, open_clip
    checkpoint: str  # the file or folder the weights came from


def _build(**sections: Dict[str, Any]) -> Any:
    """Instantiate ``model=`` / ``data=`` config sections as the CLI does (class_path dicts, nested specs)."""
    from jsonargparse import ArgumentParser

    classes = {"model": SigLIPModule, "data": ImageTextDataModule}
    parser = ArgumentParser(exit_on_error=False)
    for key in sections:
        parser.add_class_arguments(classes[key], key, fail_untyped=False, sub_configs=True)
    try:
        config = parser.parse_object(sections)
    except Exception as err:  # jsonargparse's own message names the key
        raise UserInputError(f"cannot read the model's settings: {str(err).splitlines()[0]}") from err
    return parser.instantiate_classes(config)


def _nest(settings: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """``{"model.x": 1, "data.y": 2}`` -> ``{"model": {"x": 1}, "data": {"y": 2}}``."""
    out: Dict[str, Dict[str, Any]] = {"model": {}, "data": {}}
    for key, value in settings.items():
        section, name = key.split(".", 1)
        out[section][name] = value
    return out


def _from_pretrained(folder: Path) -> LoadedModel:
    from siglip_lightning.interop.pretrained_folder import pretrained_settings

    try:
        settings = pretrained_settings(str(folder))
    except UserInputError as err:  # its messages name the --pretrained flag
        raise UserInputError(str(err).replace("--pretrained", "--model", 1)) from err
    sections = _nest(settings)  # a folder without its tokenizer was refused by the reader, naming the files
    built = _build(**sections)
    module, datamodule = built.model, built.data
    kind = "open_clip" if (folder / "open_clip_config.json").is_file() and not (folder / "config.json").is_file() \
        else ("siglip2" if sections["data"].get("naflex") else "hf")
    return LoadedModel(module, datamodule, kind, str(folder))


def _config_of(ckpt: Path) -> Optional[Path]:
    """``<log_dir>/config.yaml`` for ``<log_dir>/checkpoints/x.ckpt`` (or next to the file)."""
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def _run_checkpoint(folder: Path) -> Optional[Path]:
    """The checkpoint of a run folder: ``last.ckpt`` of the newest log folder, else its newest ``.ckpt``."""
    configs = sorted(folder.rglob("config.yaml"), key=lambda p: p.stat().st_mtime)
    for config in reversed(configs):
        # checkpoints/ beside config.yaml, or above it: configs/quickstart.yaml writes
        # runs/quickstart/checkpoints/ and the config under the logger's runs/quickstart/tb/version_N/
        for where in [config.parent, *config.parent.parents]:
            ckpts = sorted((where / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
            last = where / "checkpoints" / "last.ckpt"
            if last.is_file():
                return last
            if ckpts:
                return ckpts[-1]
            if where == folder:
                break
    return None


def _from_run(ckpt: Path) -> LoadedModel:
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    config = _config_of(ckpt)
    if config is not None:  # as `validate --config config.yaml --ckpt_path ckpt`
        saved = yaml.safe_load(config.read_text()) or {}
        built = _build(model=saved.get("model") or {}, data=saved.get("data") or {})
        module, datamodule = built.model, built.data
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    else:
        from siglip_lightning.interop.export import load_checkpoint

        module, _ = load_checkpoint(str(ckpt))
        data = {k: v for k, v in (checkpoint.get("datamodule_hyper_parameters") or {}).items()
                if not k.startswith("_")}
        datamodule = _build(data=data).data
    return LoadedModel(module, datamodule, "run", str(ckpt))


def load_model(path: str) -> LoadedModel:
    """The model at ``path`` (see the module docstring), with its datamodule's tokenizer built."""
    where = Path(path.removeprefix("local-dir:")).expanduser()
    if where.is_file() and where.suffix == ".ckpt":
        loaded = _from_run(where)
    elif where.is_dir() and ((where / "config.json").is_file() or (where / "open_clip_config.json").is_file()):
        loaded = _from_pretrained(where.resolve())
    elif where.is_dir() and _run_checkpoint(where) is not None:
        loaded = _from_run(_run_checkpoint(where))
    elif not where.exists():
        raise UserInputError(f"--model {path}: not found")
    else:
        raise UserInputError(
            f"--model {path}: unknown model kind: expected a .ckpt file, a run folder (config.yaml + "
            "checkpoints/*.ckpt), a Hugging Face folder (config.json) or an open_clip folder (open_clip_config.json)")
    datamodule = loaded.datamodule
    if datamodule.hparams.tokenizer_type in ("sentencepiece", "gemma") and not datamodule.tokenizer_file().exists():
        datamodule.prepare_data()  # the run trained its tokenizer on its captions: cached, else trained again
    datamodule.setup_tokenizer()
    return loaded
