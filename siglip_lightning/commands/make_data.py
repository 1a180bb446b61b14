"""``siglip-lightning make-data``: write the built-in shapes dataset (parquet) to a folder.

    siglip-lightning make-data --out data/shapes --spec.num_train 20000 --spec.max_objects 1

``fit`` makes it on first use under the cache folder; this command is for looking at it, or for
sharing one copy between machines (then ``--data.path data/shapes/pairs``).
"""
from __future__ import annotations

from typing import List, Optional

from jsonargparse import ArgumentParser

from siglip_lightning.data.synthetic import ShapesSpec, write_shapes_dataset


def main(argv: Optional[List[str]] = None) -> None:
    parser = ArgumentParser(prog="siglip-lightning make-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=str, required=True, help="folder to write")
    parser.add_class_arguments(ShapesSpec, "spec", as_group=False)
    args = parser.parse_args(argv)
    # built by hand: jsonargparse does not instantiate a class added with as_group=False (a Namespace comes back)
    spec = ShapesSpec(**args.spec.as_dict())
    print(write_shapes_dataset(spec, args.out))
