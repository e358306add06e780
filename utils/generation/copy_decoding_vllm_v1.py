"""The copy-constraint logits processor with the V1 model runner's base class (vLLM 0.31).

``LLM(logits_processors=[PROCESSOR_FQCN_V1])`` loads this class by name in the engine's worker when the V1 runner
runs (vLLM's CPU build: Model Runner V2 needs Triton); the V1 loader refuses any class that does not subclass
``vllm.v1.sample.logits_processor.LogitsProcessor``. The logic is ``copy_decoding_vllm.CopyConstraintV1ProcessorCore``.
"""

from __future__ import annotations

from vllm.v1.sample.logits_processor import LogitsProcessor

from utils.generation.copy_decoding_vllm import CopyConstraintV1ProcessorCore


class CopyConstraintLogitsProcessor(CopyConstraintV1ProcessorCore, LogitsProcessor):
    """V1 custom logits processor: each request with a note is constrained to a tagged copy of it."""
