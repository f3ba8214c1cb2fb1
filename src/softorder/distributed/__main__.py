"""``torchrun --nproc_per_node N -m softorder.distributed EXPERIMENT [options]``: ``softorder train``."""

import sys

from softorder.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
