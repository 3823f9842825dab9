"""Entry point for `ray job submit`: the same as `caregpt export`, on the node the job's driver runs on.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/export.py --model_name_or_path BASE --checkpoint_dir ADAPTER --template chatml \
        --output_dir MERGED --export_size 2

Merging loads the base in float32 on the CPU: the driver node needs about 4 bytes of memory per parameter.
"""

import sys

from caregpt.models.export_cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
