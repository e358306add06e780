"""The copy-constraint logits processor with vLLM's Model Runner V2 base class (vLLM 0.31; GPU machines only).

``LLM(logits_processors=[PROCESSOR_FQCN])`` loads this class by name in the engine's worker; the V2 loader
refuses any class that does not subclass ``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor``.
The logic is ``copy_decoding_vllm.CopyConstraintProcessorCore``.
"""

from __future__ import annotations

from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor

from utils.generation.copy_decoding_vllm import CopyConstraintProcessorCore


class CopyConstraintLogitsProcessor(CopyConstraintProcessorCore, LogitsProcessor):
    """Model Runner V2 custom logits processor: each request with a note is constrained to a tagged copy of it."""
