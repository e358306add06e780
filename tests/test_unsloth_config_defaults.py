"""DFTConfig has its own dataclass __init__, so UnslothSFTConfig.__init__ (what the published script's
``trl.SFTConfig(...)`` was after ``import unsloth``) never runs: the defaults it gives and the published run kept must
be DFTConfig's, and its post-init step is ``apply_unsloth_config_init``. Checked against the pinned Unsloth source."""

from __future__ import annotations

import ast
import zipfile

import pytest

from utils.configs.training import DFTConfig
from utils.testing import gpu_bundle
from utils.training.sft import UNSLOTH_CONFIG_INIT, apply_unsloth_config_init

KEPT_BY_THE_PUBLISHED_RUN = ("logging_nan_inf_filter", "torch_empty_cache_steps", "per_device_eval_batch_size",
                             "eval_accumulation_steps", "padding_free")


@pytest.fixture(scope="module")
def unsloth_rl_source() -> str:
    try:
        wheel = gpu_bundle.pinned_wheel("unsloth")
    except RuntimeError as error:
        pytest.skip(f"the pinned Unsloth wheel is not cached in {gpu_bundle.default_wheelhouse()} and cannot be "
                    f"downloaded ({error}); run `bash scripts/gpu_bundle.sh OUT_DIR` once with network")
    with zipfile.ZipFile(wheel) as archive:
        return archive.read("unsloth/models/rl.py").decode()


def config_replacements(source: str) -> dict:
    """The first ``replacements = {...}`` of rl.py: the defaults Unsloth writes into every RL/SFT config __init__."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "replacements" and \
                isinstance(node.value, ast.Dict) and any(getattr(k, "value", None) == "logging_nan_inf_filter"
                                                         for k in node.value.keys):
            return ast.literal_eval(node.value)
    raise AssertionError("rl.py has no config replacements")


def test_dft_config_defaults_are_the_unsloth_defaults_the_published_run_kept(tmp_path) -> None:
    config = DFTConfig(output_dir=str(tmp_path))
    assert (config.logging_nan_inf_filter, config.torch_empty_cache_steps, config.per_device_eval_batch_size,
            config.eval_accumulation_steps, config.padding_free) == (False, 250, 4, 2, None)


def test_every_default_unsloth_changes_is_accounted_for_and_matches(unsloth_rl_source, tmp_path) -> None:
    replacements = config_replacements(unsloth_rl_source)
    assert replacements["torch_empty_cache_steps"] == 250 and replacements["padding_free"] is None
    assert set(replacements) | {"warmup_steps", "loss_type", "gradient_checkpointing_kwargs"} <= set(UNSLOTH_CONFIG_INIT)
    config = DFTConfig(output_dir=str(tmp_path))
    for name in KEPT_BY_THE_PUBLISHED_RUN:
        assert getattr(config, name) == replacements[name], name
    # the post-init step apply_unsloth_config_init reproduces, as the pinned source writes it
    assert "_gc_kwargs['use_reentrant'] = True" in unsloth_rl_source
    assert '"sft_trainer":\n        replacements = {"loss_type": "nll"}' in unsloth_rl_source.replace(
        'if trainer_file == "sft_trainer":', '"sft_trainer":')


def test_the_unsloth_backend_makes_gradient_checkpointing_reentrant(tmp_path) -> None:
    config = apply_unsloth_config_init(DFTConfig(output_dir=str(tmp_path)))
    assert config.gradient_checkpointing_kwargs == {"use_reentrant": True}
    published = apply_unsloth_config_init(DFTConfig(output_dir=str(tmp_path),
                                                    gradient_checkpointing_kwargs={"use_reentrant": False}))
    assert published.gradient_checkpointing_kwargs == {"use_reentrant": True}  # the published False was overwritten
    off = apply_unsloth_config_init(DFTConfig(output_dir=str(tmp_path), gradient_checkpointing=False))
    assert off.gradient_checkpointing_kwargs is None


def test_grpo_seed_and_weight_decay_are_the_patched_grpo_config_defaults(unsloth_rl_source, tmp_path) -> None:
    """The published train_grpo.py passed neither seed nor weight_decay to Unsloth's patched GRPOConfig. Its seed
    default is 3407 in the pinned source as in 2026.4.3; its weight decay was 0.01 in 2026.4.3 (the published era,
    read from that wheel's rl.py) and is 0.001 in the pinned 2026.10.9: ours keeps the published 0.01."""
    from utils.configs.training import LamarGRPOConfig

    replacements = config_replacements(unsloth_rl_source)
    config = LamarGRPOConfig(output_dir=str(tmp_path))
    assert config.seed == replacements["seed"] == 3407
    assert (replacements["weight_decay"], config.weight_decay) == (0.001, 0.01)
