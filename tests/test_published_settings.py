"""The code defaults are the published settings: each number below is quoted from SPEC sections 4-6.

This is the one place the tests restate published values; every other test takes them from the defaults
(``utils.configs``), so a drift from the published run fails here and nowhere else.
"""

from __future__ import annotations

import pytest
import torch

from ensemble.consensus import Thresholds
from utils.cli import parse_args
from utils.configs import BASE_MODEL, RELEASED_MODEL_1, split_files
from utils.configs.pipeline import EmbeddingArguments, InferenceArguments, OptimizeArguments, RetrieveArguments
from utils.training.models import LANGUAGE_MODEL_PROJECTIONS

ON_GPU = torch.cuda.is_available()


def test_model_1_and_3_dft_settings() -> None:
    from utils.configs.training import DFTConfig, DFTModelConfig, DFTScriptArguments

    script, model, config = parse_args(DFTScriptArguments, DFTModelConfig, DFTConfig, argv=[])
    assert (model.model_name_or_path, script.backend, script.loss) == ("Qwen/Qwen3.5-4B", "unsloth", "dft")
    assert script.loss_mask == "response"  # train_on_responses_only: the empty think block is trained too
    assert model.model_name_or_path == BASE_MODEL
    assert (model.use_peft, model.lora_r, model.lora_alpha, model.lora_dropout, model.use_rslora) == (True, 256, 32, 0.0, True)
    assert set(model.lora_target_modules) == set(LANGUAGE_MODEL_PROJECTIONS)  # attention + MLP of the language model
    assert (config.learning_rate, config.lr_scheduler_type, config.warmup_steps, config.weight_decay) == (2e-4, "cosine", 0.05, 0.001)
    assert (config.num_train_epochs, config.per_device_train_batch_size, config.gradient_accumulation_steps) == (2, 1, 8)
    assert config.optim == ("adamw_8bit" if ON_GPU else "adamw_torch")  # 8-bit AdamW needs a GPU
    assert (config.max_length, config.seed, config.gradient_checkpointing) == (24576, 3407, True)
    assert (config.save_strategy, config.save_total_limit) == ("epoch", None)  # a checkpoint per epoch, all kept
    assert config.completion_only_loss is True and config.packing is False  # loss on the answer only
    assert config.bf16 is (ON_GPU and torch.cuda.is_bf16_supported())


def test_model_2_grpo_settings() -> None:
    from utils.configs.training import GRPOModelConfig, GRPOScriptArguments, LamarGRPOConfig

    script, model, config = parse_args(GRPOScriptArguments, GRPOModelConfig, LamarGRPOConfig, argv=[])
    assert model.model_name_or_path == RELEASED_MODEL_1 == "Keetawan/Qwen3.5-4B_LoRA_Exact_BF16_Rank256_Alpha32_DFT"
    assert (model.lora_r, model.lora_alpha) == (2, 2)
    assert script.rewards == ["fidelity", "token_f1", "exact_f1"]
    # The published script computed max_prompt_length = 10029 but never passed it: every note is used.
    assert script.max_prompt_length is None
    # Its prompt opened with four quotes (a stray '"') and it passed no thinking switch to the chat template.
    assert script.prompt_stray_quote is True and script.enable_thinking == "template"
    assert (config.loss_type, config.epsilon, config.epsilon_high, config.beta) == ("dapo", 0.2, 0.28, 0.0)
    assert config.importance_sampling_level == "token" and config.mask_truncated_completions is True
    assert config.multi_objective_aggregation == "normalize_then_sum"  # GDPO
    assert (config.learning_rate, config.lr_scheduler_type, config.num_train_epochs) == (5e-5, "constant", 1)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps, config.max_grad_norm) == (2, 4, 0.2)
    # min_p 0.1 sat only in vLLM sampling params of a run without vLLM (Unsloth fast_inference=False): not applied.
    assert (config.num_generations, config.temperature, config.min_p, config.top_p) == (8, 1.0, None, 1.0)
    assert (config.max_completion_length, config.save_steps) == (14547, 10)
    assert config.chat_template_kwargs is None
    # The published GRPOConfig (Unsloth's patched one) set neither: Unsloth 2026.4.3's defaults are 3407 and 0.01.
    assert (config.seed, config.weight_decay) == (3407, 0.01)
    assert config.vllm_importance_sampling_correction is False  # no vLLM in the published run, so no correction


def test_inference_settings() -> None:
    args = InferenceArguments()
    assert (args.backend, args.temperature, args.max_new_tokens, args.max_model_len, args.logprobs,
            args.enable_thinking) == ("vllm", 0.0, 24576, 32768, True, False)


def test_pseudo_label_settings() -> None:
    embedding = EmbeddingArguments()
    assert embedding.model == "Qwen/Qwen3-Embedding-4B"
    assert (embedding.dtype, embedding.attn_implementation, embedding.padding_side) == ("float16", "flash_attention_2", "left")
    retrieve = RetrieveArguments()
    assert (retrieve.top_k, retrieve.per_note) == (100, 5)
    assert retrieve.query_splits == split_files() == [f"MedDec/splits/{s}.txt" for s in ("train", "val", "test")]
    from utils.configs.pipeline import SelectArguments

    assert SelectArguments().threshold == 0.10
    from utils.configs.pipeline import ExploreArguments

    assert ExploreArguments().quantiles == [0.10, 0.15, 0.20, 0.25, 0.30, 0.5, 0.75]  # the explorer's candidates


def test_ensemble_settings() -> None:
    assert Thresholds() == Thresholds(t_cluster=0.1, t_pair=0.1, t_support=0.34, t_dedup=0.8)
    args = OptimizeArguments(predictions=["a.json"])
    assert (args.n_trials, args.storage, args.study_name) == (5000, "sqlite:///mbr_optuna.db", "mbr_tuning_study")
    assert args.seed is None  # TPESampler() unseeded


@pytest.mark.parametrize("name, value", [
    ("learning_rate", 2e-5), ("lr_scheduler_type", "cosine"), ("optim", "adamw_torch"), ("weight_decay", 0.001),
    ("warmup_steps", 0.05), ("seed", 3407), ("num_train_epochs", 250), ("per_device_train_batch_size", 32),
    ("eval_steps", 500), ("metric_for_best_model", "f1"), ("load_best_model_at_end", True), ("save_strategy", "best")])
def test_baseline_settings(name, value) -> None:
    from utils.configs.baseline import WINDOW, BaselineTrainingArguments

    assert WINDOW == 512
    assert getattr(BaselineTrainingArguments(), name) == value


def test_baseline_labels_and_decoding() -> None:
    from utils.configs.baseline import BaselineArguments

    args = BaselineArguments()
    assert (args.overlap_rule, args.orphan_inside, args.eval_csv) == ("later_wins", "ignore", "data/tagged/val.csv")
    assert args.window_layout == "raw"  # plain slices of the note with its special tokens, labelled O


def test_data_preparation_and_pseudo_label_mix() -> None:
    from utils.configs.pipeline import ExtractArguments, GtToTagArguments, SelectArguments

    gt = GtToTagArguments()
    assert gt.dedupe_spans is False and gt.keep_split_order is False  # doubled duplicate tags, notes sorted
    select = SelectArguments()
    assert (select.pseudo_target, select.empty_output_entropy) == ("nan", "zero")
    assert ExtractArguments().exclude_by_exact_id is False  # the published exact-id exclusion leaks: off
