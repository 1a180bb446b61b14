"""``siglip-lightning configs``: the configs that ship with the package: list them, print a path, copy them.

    siglip-lightning configs                          # every packaged config, as commands name it
    siglip-lightning configs --path configs/quickstart.yaml   # where that file is
    siglip-lightning configs --copy .                 # ./configs/...: edit them; a file here wins

Every command takes ``configs/...`` as written in the README from any directory: when the path is not
in the working directory, the packaged file is used (and a line on stderr says so).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional

from jsonargparse import ArgumentParser

from siglip_lightning.config_files import PREFIX, configs_root, list_configs, packaged
from siglip_lightning.errors import UserInputError


def main(argv: Optional[List[str]] = None) -> None:
    parser = ArgumentParser(prog="siglip-lightning configs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Optional[str], default=None,
                        help="print the packaged file of this config (configs/NAME.yaml or NAME.yaml)")
    parser.add_argument("--copy", type=Optional[str], default=None,
                        help="copy the packaged configs/ folder into this folder (never overwrites a file)")
    args = parser.parse_args(argv)
    if args.path:
        name = args.path[len(PREFIX) + 1:] if args.path.startswith(PREFIX + "/") else args.path
        print(packaged(name))
    elif args.copy:
        target = Path(args.copy) / PREFIX
        if target.resolve() == configs_root().resolve():
            raise UserInputError(f"{target} is the packaged folder itself")
        copied = 0
        for source in configs_root().rglob("*.yaml"):
            dest = target / source.relative_to(configs_root())
            if not dest.exists():  # a user's edited copy stays
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)
                copied += 1
        print(f"{copied} config(s) copied to {target}")
    else:
        print("\n".join(list_configs()))
