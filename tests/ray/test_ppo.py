"""PPO on a real Ray Train (1 and 2 workers) with the tiny model, and the reward checks.

The trend runs use the dense `keyword_density` reward. The tiny model is randomly initialised:
its logits span only about +-2.6 (RMSNorm output times 0.02-scale tied embeddings), so adapters
on the attention layers alone cannot move the next-token distribution far enough to learn in a
few dozen steps; a LoRA on lm_head can, which is why the runs below target it. GAE lambda 1.0
because the value head starts at zero: with lambda < 1 the score reaches early tokens shrunk by
lambda^distance, and whitening turns that position pattern into advantage noise until the values
have learned it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from caregpt.config.loader import ConfigError, config_to_json, load_config
from tests.conftest import TEST_DATA

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TREND = {
    "reward_function": "keyword_density",
    "lora_target": "q_proj,v_proj,o_proj,lm_head",
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 2,  # 16 rollouts per worker per step, 2 minibatches of 8
    "ppo_epochs": 2,
    "ppo_lambda": 1.0,
    "ppo_kl_coef": 0.005,
    "learning_rate": 0.005,
    "max_new_tokens": 16,
    "max_steps": 40,
    "logging_steps": 5,
    "save_steps": 20,
    "seed": 2,
}
CRASH_AT = 22  # after the step-20 checkpoint


def _config(model: str, tmp_path: Path, **overrides):
    values = {
        "model_name_or_path": model,
        "stage": "ppo",
        "dataset": str(TEST_DATA / "sft_toyhom_im_department.jsonl"),
        "template": "chatml",
        "cutoff_len": 128,
        "max_samples": 64,
        "reward_function": "keyword_density",
        "output_dir": str(tmp_path / "out"),
        **overrides,
    }
    return load_config(None, {k: str(v) for k, v in values.items() if v is not None})


@pytest.fixture(scope="module")
def ppo_data(ray_local, tiny_model, test_data, tmp_path_factory) -> str:
    from caregpt.data.prepare import prepare

    root = tmp_path_factory.mktemp("ppo-data")
    config = _config(tiny_model, root, tokenized_path=str(root / "tokenized"))
    path, manifest = prepare(config, tiny_model)
    assert manifest["records_used"] == 64
    return str(path)


def _fit(config, data_path: str, workers: int, storage: Path, crash_log: Path | None = None):
    """ppo_loop under a real TorchTrainer. With crash_log: every step's metrics are recorded there
    per attempt, and the first attempt fails at CRASH_AT, so Ray Train restarts from a checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer

    def train_fn(loop_config):  # defined here: Ray ships it by value to the workers
        from caregpt.config.loader import config_from_json
        from caregpt.train import ppo
        from caregpt.train import ppo_math as pm

        log = loop_config.get("crash_log")
        if log:
            current, sample, measure = {}, pm.sample_indices, ppo.step_metrics
            attempt = "second" if Path(log).exists() else "first"
            recorded = json.loads(Path(log).read_text()) if attempt == "second" else {}

            def sample_indices(count, size, seed, step, rank):
                current["step"] = step
                return sample(count, size, seed, step, rank)

            def step_metrics(*args, **kwargs):
                metrics = measure(*args, **kwargs)
                recorded.setdefault(attempt, {})[str(current["step"])] = metrics
                Path(log).write_text(json.dumps(recorded))
                if attempt == "first" and current["step"] == loop_config["crash_at"]:
                    raise RuntimeError("injected worker failure")
                return metrics

            pm.sample_indices, ppo.step_metrics = sample_indices, step_metrics
        ppo.ppo_loop(config_from_json(loop_config["config"]), loop_config)

    loop_config = {"config": config_to_json(config), "data_path": data_path, "threads": 1}
    if crash_log:
        loop_config.update(crash_log=str(crash_log), crash_at=CRASH_AT)
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(
            name=f"ppo-{workers}", storage_path=str(storage), failure_config=ray.train.FailureConfig(max_failures=1 if crash_log else 0)
        ),
    )
    start = time.perf_counter()
    result = trainer.fit()
    print(f"ppo with {workers} worker(s): {time.perf_counter() - start:.1f}s")
    with result.checkpoint.as_directory() as directory:
        files = {p.name: p.read_text() for p in Path(directory).iterdir() if p.suffix in (".json", ".jsonl")}
        names = sorted(p.name for p in Path(directory).iterdir())
    history = [json.loads(line) for line in files["trainer_log.jsonl"].splitlines() if line.strip()]
    return json.loads(files["all_results.json"]), history, names


@pytest.fixture(scope="module")
def one_worker(ppo_data, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo-one")
    crash_log = root / "crash.json"
    outcome = _fit(_config(tiny_model, root, **TREND), ppo_data, 1, root / "storage", crash_log=crash_log)
    return (*outcome, json.loads(crash_log.read_text()))


def _rewards(history: list[dict]) -> list[float]:
    return [round(entry["reward_mean"], 3) for entry in history]


def _assert_learned(history: list[dict]) -> None:
    """Reward up clearly; KL finite, under 120 nats per 16-token answer (16 ln 4096 = 133 would be a
    deterministic policy against a uniform reference), and the KL-penalised objective up too.

    Measured (reward of the first / last 5-step window, KL of the last): this config 0.083 -> 0.549,
    KL 61 on one worker, 0.084 -> 0.490, KL 46 on two; seeds 3 and 5 on one worker (no Ray) end at
    0.49 / 0.33 with KL 57 / 32.
    """
    rewards, kls = _rewards(history), [entry["kl"] for entry in history]
    assert rewards[0] < 0.12, rewards
    # with the tiny model built from the trimmed tests/data corpus (bare clone): 0.071 -> 0.216 on one worker
    assert rewards[-1] > rewards[0] + 0.1 and rewards[-1] > 2 * rewards[0], rewards
    assert all(-1.0 < k < 120.0 for k in kls), kls
    coef = history[-1]["kl_coef"]
    assert rewards[-1] - coef * kls[-1] > rewards[0] - coef * kls[0], (rewards, kls)


def test_one_worker_raises_the_reward_with_bounded_kl(one_worker):
    results, history, names, _ = one_worker
    print("1 worker: reward per 5 steps", _rewards(history), "kl", [round(e["kl"], 1) for e in history])
    assert [entry["step"] for entry in history] == [5, 10, 15, 20, 25, 30, 35, 40]
    _assert_learned(history)
    assert history[-1]["kl_coef"] > TREND["ppo_kl_coef"]  # KL above the target 6: the controller raised the penalty
    assert results["reward_mean_first"] == history[0]["reward_mean"] and results["reward_mean_last"] == history[-1]["reward_mean"]
    assert results["kl_last"] == history[-1]["kl"] and results["step"] == 40
    for name in ("adapter_model.safetensors", "adapter_config.json", "value_head.safetensors", "tokenizer.json", "trainer_log.jsonl", "all_results.json", "caregpt_final.json"):
        assert name in names, name
    assert not [n for n in names if n.endswith(".bin")]


def test_a_crashed_worker_resumes_from_the_checkpoint_and_repeats_the_same_steps(one_worker):
    results, history, _, crash = one_worker
    assert results["resumed_from_step"] == 20
    assert sorted(map(int, crash["first"])) == list(range(1, CRASH_AT + 1))
    assert sorted(map(int, crash["second"])) == list(range(21, 41))  # restarted at the checkpoint, not at 0
    for step in ("21", "22"):  # same prompts, samples and optimizer state: the same numbers again
        for key in ("reward_mean", "kl", "policy_loss", "value_loss"):
            assert crash["second"][step][key] == pytest.approx(crash["first"][step][key], rel=1e-4, abs=1e-6), (step, key)


def test_two_workers_follow_the_same_trend(one_worker, ppo_data, tiny_model, tmp_path):
    results, history, _ = _fit(_config(tiny_model, tmp_path, **TREND), ppo_data, 2, tmp_path / "storage")
    rewards, one = _rewards(history), _rewards(one_worker[1])
    print("2 workers: reward per 5 steps", rewards, "kl", [round(e["kl"], 1) for e in history])
    _assert_learned(history)
    assert abs(rewards[0] - one[0]) < 0.03, (rewards, one)  # the same model sampled: the same start
    # both must learn (above); where they end varies with the sampled answers: on the tests/data tiny model
    # one worker ended at 0.216 and two at 0.598 in the same run
    assert abs(rewards[-1] - one[-1]) < 0.45, (rewards, one)
    assert results["resumed_from_step"] == 0


# ---- rewards (no Ray) --------------------------------------------------------------------------


def test_rule_rewards():
    from caregpt.train.rewards import keyword_density, safety_reminder

    advice = "这种情况建议尽快到医院就诊，由医生检查血常规后再决定是否需要用药，不要自行服用抗生素。"
    assert safety_reminder("", advice) == 1.0
    assert safety_reminder("", "多喝热水，注意休息，清淡饮食，一般三到五天就会慢慢好转的，不用太担心，也不必吃药。") == 0.0
    assert safety_reminder("", "") == pytest.approx(-0.2)  # an empty answer is worse than a useless one
    assert 0.5 < safety_reminder("", "去医院") < 1.0  # a bare reminder is not a full answer
    assert keyword_density("", "医生医生") == 1.0 and keyword_density("", "  ") == 0.0
    assert keyword_density("", "医 a") == pytest.approx(0.5)  # spaces do not count


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_reward_model_directory_scores_each_answer(tiny_model, tmp_path, kind):
    """What `--stage rm` leaves behind: a full *ForSequenceClassification model, or a SEQ_CLS adapter (+ score head)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from caregpt.train.rewards import get_reward

    directory = tmp_path / "rm"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    if kind == "lora":
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(directory)
    score = get_reward(_config(tiny_model, tmp_path, reward_function=None, reward_model=str(directory)))
    prompts = ["<|im_start|>user\n发烧怎么办<|im_end|>\n<|im_start|>assistant\n"] * 2
    scores = score(prompts, ["多喝水", "建议去医院就诊，请医生检查"])
    assert scores.shape == (2,) and scores.isfinite().all()
    assert scores.tolist() == score(prompts, ["多喝水", "建议去医院就诊，请医生检查"]).tolist()


def _causal_lm_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "sft-model"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return directory


def _adapter_dir(tmp_path: Path, task_type: str, base: str) -> Path:
    directory = tmp_path / f"adapter-{task_type}"
    directory.mkdir(exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps({"task_type": task_type, "base_model_name_or_path": base}))
    return directory


@pytest.mark.parametrize(
    "case, message",
    [
        ("neither", "exactly one reward.*neither is set"),
        ("both", "exactly one reward.*both are set"),
        ("typo", "unknown reward_function 'safety_reminde'.*did you mean 'safety_reminder'.*valid: safety_reminder, keyword_density"),
        ("missing", "does not exist"),
        ("causal_lm", "is not a reward model.*LlamaForCausalLM.*train one with --stage rm"),
        ("no_config", "is not a reward model.*no config.json"),
        ("sft_adapter", "is not a reward model.*task_type 'CAUSAL_LM'"),
    ],
)
def test_validate_reward_rejects(case, message, tmp_path, tiny_model):
    from caregpt.train.rewards import validate_reward

    reward = {
        "neither": {"reward_function": None},
        "both": {"reward_model": str(_causal_lm_dir(tmp_path))},
        "typo": {"reward_function": "safety_reminde"},
        "missing": {"reward_function": None, "reward_model": str(tmp_path / "nope")},
        "causal_lm": {"reward_function": None, "reward_model": str(_causal_lm_dir(tmp_path))},
        "no_config": {"reward_function": None, "reward_model": str(tmp_path)},
        "sft_adapter": {"reward_function": None, "reward_model": str(_adapter_dir(tmp_path, "CAUSAL_LM", tiny_model))},
    }[case]
    with pytest.raises(ConfigError, match=message):
        validate_reward(_config(tiny_model, tmp_path, **reward))


def test_validate_reward_accepts_a_reward_adapter_and_ignores_other_stages(tmp_path, tiny_model):
    from caregpt.train.ppo import validate_ppo
    from caregpt.train.rewards import validate_reward

    validate_ppo(_config(tiny_model, tmp_path, reward_function=None, reward_model=str(_adapter_dir(tmp_path, "SEQ_CLS", tiny_model))))
    validate_reward(_config(tiny_model, tmp_path, stage="sft", reward_function=None))
    with pytest.raises(ConfigError, match="LoRA adapters only"):
        validate_ppo(_config(tiny_model, tmp_path, finetuning_type="full"))
    with pytest.raises(ConfigError, match="packing false"):
        validate_ppo(_config(tiny_model, tmp_path, packing="true"))
