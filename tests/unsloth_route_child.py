"""Child process of tests/test_unsloth_loss_route.py: the kernel route against the real Unsloth code, on CPU.

    TRITON_INTERPRET=1 PYTHONPATH=<extracted unsloth + unsloth_zoo wheels>:<repo> python tests/unsloth_route_child.py OUT.json

Imports the pinned Unsloth (its CPU fallback), lets Unsloth patch transformers' LOSS_MAPPING *before* our install
(the case where ``FastModel.from_pretrained``'s own ``patch_loss_functions`` call changes nothing), installs our
kernel, puts Unsloth's own ``Fast_CrossEntropyLoss`` back (so a route that depended on that module-global lookup would
miss our kernel), repeats what ``from_pretrained`` does (``patch_loss_functions(torch_compile=False)`` and
``post_patch_loss_function`` on a tiny Qwen3.5), then runs the model's loss. Writes what it saw as JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch


def main(out: str) -> None:
    import unsloth  # noqa: F401  (the real package: our unsloth/ folder is not a package)
    import transformers.loss.loss_utils as loss_utils
    import unsloth.kernels.cross_entropy_loss as unsloth_ce
    import unsloth.models.loader as unsloth_loader
    from unsloth_zoo.loss_utils import post_patch_loss_function

    from utils.paths import load_module_from_path
    from utils.testing.tiny_models import build_tiny_qwen35, build_tiny_tokenizer
    from utils.training.dft import dft_loss
    from utils.training.layout import load_generative_model

    seen: dict = {"unsloth_file": unsloth.__file__}
    kernel = load_module_from_path("unsloth/kernels/cross_entropy_loss.py", "lamar_dft_cross_entropy_route")
    unsloth_ce.patch_loss_functions(torch_compile=False)  # Unsloth's mapping, built before our install
    seen["before_install_reaches_kernel"] = kernel.loss_reaches_kernel(loss_utils.LOSS_MAPPING["ForCausalLM"])
    original_class = unsloth_ce.Fast_CrossEntropyLoss
    report = kernel.install_into_unsloth(dft=True)
    seen["patched"] = report.patched
    unsloth_ce.Fast_CrossEntropyLoss = original_class  # no module-global accident to lean on
    unsloth_loader.patch_loss_functions(torch_compile=False)  # what FastModel.from_pretrained runs next
    seen["mapping_reaches_kernel"] = {key: kernel.loss_reaches_kernel(fn) for key, fn in
                                      loss_utils.LOSS_MAPPING.items() if "Causal" in getattr(fn, "__name__", "")}

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tiny_tokenizer(["a short clinical note"] * 3, vocab_size=300)
        model = load_generative_model(str(build_tiny_qwen35(Path(tmp) / "m", tokenizer, num_layers=2)))
    post_patch_loss_function(model)  # freezes the mapping's loss onto the instance, as from_pretrained does
    kernel.check_model_loss(model)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.get_text_config().vocab_size, (1, 12), generator=generator)
    labels = ids.clone()
    labels[0, :4] = -100
    before = kernel.kernel_call_count()
    output = model(input_ids=ids, labels=labels)
    seen["kernel_calls"] = kernel.kernel_call_count() - before
    logits = model(input_ids=ids).logits.detach()
    seen["loss"] = float(output.loss)
    seen["dft_reference"] = float(dft_loss(logits[:, :-1].float(), labels[:, 1:]))
    seen["ce_reference"] = float(dft_loss(logits[:, :-1].float(), labels[:, 1:], dft=False))

    model.loss_function = loss_utils.ForCausalLMLoss  # a loss that never reaches the kernel must be caught
    try:
        kernel.check_model_loss(model)
        seen["stock_loss_caught"] = None
    except RuntimeError as error:
        seen["stock_loss_caught"] = str(error)
    Path(out).write_text(json.dumps(seen, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
