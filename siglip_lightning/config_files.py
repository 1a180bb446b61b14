"""The YAML configs that ship with the package, and how a ``configs/...`` path finds them.

The repository's ``configs/`` folder is the one source of truth. A wheel carries a build-time copy of it
as ``siglip_lightning/configs/`` (``setup.py`` maps that package folder onto ``configs/``); a clone or an
editable install has no such folder next to the code and reads the checkout's ``configs/`` instead.

Commands and configs name configs as ``configs/...`` relative to the working directory (README, sweep
``base:`` lists). :func:`resolve` keeps that working from any directory: a relative ``configs/...`` path
that is not there is taken from the package, and says so on stderr. A file in the working directory
always wins, so an edited copy (``siglip-lightning configs --copy .``) is what runs.
"""
from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath
from typing import List, Optional

from siglip_lightning.errors import UserInputError

PREFIX = "configs"
_PACKAGE = Path(__file__).resolve().parent


def configs_root() -> Path:
    """The packaged configs folder: the wheel's copy, else the checkout's ``configs/`` (clone, editable)."""
    shipped = _PACKAGE / PREFIX
    if shipped.is_dir():
        return shipped
    checkout = _PACKAGE.parent / PREFIX  # only when the package sits in its repository (pyproject beside it)
    if checkout.is_dir() and (_PACKAGE.parent / "pyproject.toml").is_file():
        return checkout
    raise UserInputError(f"no packaged configs next to {_PACKAGE}: reinstall siglip-lightning from a wheel or a clone")


def packaged(name: str) -> Path:
    """``packaged("experiments/siglit/text_tower.yaml")``: a config file of the package, by its name under configs/."""
    path = configs_root() / name
    if not path.is_file():
        raise UserInputError(f"no packaged config {name!r} (see `siglip-lightning configs`)")
    return path


def _packaged_name(value: str) -> Optional[str]:
    """The name under configs/ of a relative ``configs/...`` path (``./configs/x.yaml`` too), else None."""
    if not value or Path(value).is_absolute() or "\\" in value:
        return None
    parts = PurePosixPath(value).parts
    parts = parts[1:] if parts[:1] == (".",) else parts
    if len(parts) < 2 or parts[0] != PREFIX or ".." in parts:
        return None
    return "/".join(parts[1:])


def resolve(value: str, quiet: bool = False) -> str:
    """``value`` unchanged if it exists (or is not a ``configs/...`` path); else the packaged file's path."""
    name = _packaged_name(str(value))
    if name is None or Path(value).exists():
        return value
    try:
        path = configs_root() / name
    except UserInputError:
        return value
    if not path.is_file():
        return value  # the command's own "not found" names what the user typed
    if not quiet:
        print(f"siglip-lightning: {value} is not in {Path.cwd()}: using the packaged {path}", file=sys.stderr)
    return str(path)


# Options whose value is a config file, for every command (fit / validate / ... / plan: --config;
# evaluate: --suite; experiments: --config, and its --base list is resolved by the sweep loader).
FILE_OPTIONS = ("--config", "-c", "--suite")


def resolve_args(argv: List[str]) -> List[str]:
    """``argv`` with each config-file option's ``configs/...`` value resolved (``--opt X`` and ``--opt=X``)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in FILE_OPTIONS and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
        elif "=" in arg and arg.split("=", 1)[0] in FILE_OPTIONS:
            key, value = arg.split("=", 1)
            out[i] = f"{key}={resolve(value)}"
    return out


def list_configs() -> List[str]:
    """Every packaged config, as the ``configs/...`` name commands take."""
    root = configs_root()
    return sorted(f"{PREFIX}/{p.relative_to(root).as_posix()}" for p in root.rglob("*.yaml"))
