"""Entry point for `ray job submit`: the same as `caregpt tune`, on the cluster the job runs in.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/tune.py jobs/configs/tune_sft_tiny_cpu.yaml --tune.max_concurrent_trials 4

Submitting the same command again after the job was stopped resumes the experiment.
"""

import sys

from caregpt.tune.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
