"""Entry point for `ray job submit`: the same as `caregpt eval`, run as the job's driver.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/eval.py --task choice --data ../shared/data/mcq_cmmlu_medical_test.jsonl \
        --model_name_or_path outputs/tiny --output_dir outputs/eval/cmmlu

The choice eval runs in the driver process; on a GPU cluster give the driver a GPU with
`ray job submit --entrypoint-num-gpus 1 ...`.
"""

import sys

from caregpt.eval.cli import cli_entry

if __name__ == "__main__":
    sys.exit(cli_entry(sys.argv[1:]))
