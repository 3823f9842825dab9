"""Entry point for `ray job submit`: the same as `caregpt predict`, on the cluster the job runs in.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/predict.py --model_name_or_path BASE --checkpoint_dir ADAPTER --dataset NAME \
        --dataset_dir DIR --do_predict --predict_with_generate --max_samples 100 \
        --per_device_eval_batch_size 8 --max_new_tokens 128 --num_workers 2 --output_dir OUT

The model actors need BASE, ADAPTER and the data at the same paths on every node (shared storage).
"""

import sys

from caregpt.eval.predict_cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
