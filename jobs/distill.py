"""Entry point for `ray job submit`: the same as `caregpt distill`, on the cluster the job runs in.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"env_vars": {"OPENAI_API_KEY": "..."}}' -- \
        python jobs/distill.py jobs/configs/distill_example.yaml --base_url https://api.openai.com/v1

Submitting the same command again after the job was stopped resumes: finished seeds are skipped.
"""

import sys

from caregpt.distill.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
