"""Entry point for `ray job submit`: the same as `caregpt train`, on the cluster the job runs in.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py jobs/configs/sft_tiny_cpu.yaml --max_steps 20
"""

import sys

from caregpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
