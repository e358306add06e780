"""The instruction the released LAMAR checkpoints were trained with, kept byte-identical in one place.

The numbering inside the prompt differs from the category ids; that is how it was published. The chat
template is applied with thinking switched off (``enable_thinking=False``).

The published GRPO script (Model 2) wrote its copy of the instruction between four double quotes, so its prompt
starts with one stray ``"`` (``GRPO_STRAY_QUOTE``); ``build_prompt(..., stray_quote=True)`` gives that prompt.
"""

from __future__ import annotations

from typing import Any

RAW_TEXT_FIELD = "{raw_text}"
GRPO_STRAY_QUOTE = '"'  # the first character of the published GRPO prompt

# The chat template is applied with thinking off, as the released checkpoints were trained and are served.
CHAT_TEMPLATE_KWARGS: dict[str, Any] = {"enable_thinking": False}

PROMPT_TEMPLATE = """You are an expert specializes in extracting clinical decisions from a patient's discharge summary.

### YOUR TASK ###
Given an input discharge summary, return the EXACT SAME text, but with specific phrases wrapped in inline tags to mark clinical decisions.

IMPORTANT:
- Do NOT add, remove, or rephrase any text outside the tags.
- Preserve all original punctuation, line breaks, and spacing.
- EVERY opening tag MUST have a corresponding closing tag (e.g., <drug_decision>Aspirin 81 mg daily</drug_decision>).
- These tags CAN overlap or nest in one another, as long as they are VALID TAGS.

### DECISION CATEGORIES & TAGS ###
Use the following tags exactly as defined:
1. <define_problem> : diagnostic conclusions, health state evaluations, etiological inference, or prognostic judgment.
2. <drug_decision> : decisions to start, stop, continue, withhold, or modify medications.
3. <evaluate_result> : interpretation of clinical findings or test results.
4. <contact_related> : admissions, discharges, follow-ups, or referrals to other hospitals.
5. <therapeutic_procedure> : decisions to perform, plan, or refrain from procedures.
6. <advice_and_precaution> : patient instructions, advice, or precautions.
7. <gather_info> : decisions to order tests and investigations or consult another colleague.
8. <treatment_goal> : therapeutic goals, aims, or treatment objectives.
9. <defer_decision> : delaying judgment or action for now.

### ANNOTATION RULES ###
1. Boundary: Annotate spans that capture the full clinical decision. Prefer longer spans than short words.
2. Comprehensiveness: The output should be comprehensively annotated. Extract as many valid decisions as possible.
3. Exclusions: DO NOT annotate document headers or labels (e.g., "Admission Date:", "Discharge Date:", "Physical Exam:").
4. Overlapping Spans: Spans may overlap or belong to multiple categories. Wrap each span independently with all applicable tags.
Example (nested): <drug_decision>continue warfarin for <treatment_goal>stroke prevention</treatment_goal></drug_decision>
Example (partial overlap): <define_problem>The next previous examination suggested <evaluate_result>atelectasis</define_problem> - density in the left base cannot be evaluated</evaluate_result>

### OUTPUT FORMAT ###
Return ONLY the fully annotated text. Ensure all tags are properly closed. Do not include any explanations.

### INPUT TEXT ###
{raw_text}"""


def build_prompt(raw_text: str, stray_quote: bool = False) -> str:
    """The user message for one note: the template with ``{raw_text}`` replaced by the note (``stray_quote``: with
    the published GRPO prompt's leading ``"``)."""
    return (GRPO_STRAY_QUOTE if stray_quote else "") + PROMPT_TEMPLATE.replace(RAW_TEXT_FIELD, raw_text, 1)


def build_messages(raw_text: str, answer: str | None = None, stray_quote: bool = False) -> list[dict[str, Any]]:
    """Chat messages for one note; with ``answer`` the assistant turn is included (training)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": build_prompt(raw_text, stray_quote)}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def render_chat_prompt(tokenizer: Any, raw_text: str, enable_thinking: bool = False) -> str:
    """Generation prompt text for one note through the tokenizer's chat template (thinking off as published)."""
    return tokenizer.apply_chat_template(
        build_messages(raw_text), tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )
