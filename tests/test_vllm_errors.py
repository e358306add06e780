"""vLLM's engine errors reach the user in vLLM's own words, on one line (issue 20, bug 4): vLLM 0.31 raises its
configuration errors inside pydantic's ``ValidationError`` ("1 validation error for VllmConfig ..."), which the CLI
used to report as an unloadable --model. The real engine's refusal is in tests/vllm_tier."""

from __future__ import annotations

import pydantic
import pytest

from utils.configs.pipeline import InferenceArguments
from utils.fileio import InputError
from utils.generation.backends import VllmEngineError, vllm_message
from utils.generation.runner import build_generator
from utils.testing import fake_vllm


@pydantic.dataclasses.dataclass
class _Config:  # raises like vllm.config.VllmConfig's validators
    runner: str

    @pydantic.field_validator("runner")
    @classmethod
    def _needs_triton(cls, value: str) -> str:
        raise ValueError("Model Runner V2 requires Triton.")


def test_vllm_message_is_vllms_own_text_on_one_line() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        _Config(runner="v2")
    assert "1 validation error for _Config" in str(caught.value)
    assert vllm_message(caught.value) == "Model Runner V2 requires Triton."
    assert vllm_message(RuntimeError("Engine core initialization failed.\n  See root cause above.")) == \
        "Engine core initialization failed. See root cause above."
    assert vllm_message(MemoryError()) == "MemoryError"


def test_the_cli_reports_an_engine_start_failure_as_vllm_wrote_it(monkeypatch) -> None:
    vllm = fake_vllm.install(monkeypatch)

    def refuse(**kwargs):
        _Config(runner="v2")

    monkeypatch.setattr(vllm, "LLM", refuse)
    args = InferenceArguments(backend="vllm", model="any/model", input=["x.csv"], output=["y.csv"])
    with pytest.raises(InputError) as caught:
        build_generator(args)
    assert str(caught.value) == ("<command line>: --backend: got 'vllm': vLLM could not start the engine: Model Runner "
                                 "V2 requires Triton.")
    with pytest.raises(VllmEngineError, match=r"^Model Runner V2 requires Triton\.$"):
        from utils.generation.backends import VllmGenerator

        VllmGenerator({"model": "any/model"}, None, 0.0, True, 0)
