"""The GRPO reward functions of LAMAR Model 2 (the published path; the code is ``utils.training.rewards``).

``fidelity_reward``, ``token_f1_reward`` and ``exact_f1_reward`` are the published rewards, identical in value and
type to the published code; ``official_score_reward`` is an optional fourth. ``reward_functions(names)`` gives them
by name for ``scripts/train_grpo.py --rewards``.
"""

from utils.training.rewards import *  # noqa: F401,F403  (this file is the published entry point)
from utils.training.rewards import REWARDS_BY_NAME, reward_functions  # noqa: F401
