"""The one agent environment: TRL's `environment_factory` in training AND the evaluation loop's episode.

* `core.py` — `AgentEnv`: the episode core (task, turns, current image, budgets) and the tools; every action of
  every protocol goes through `AgentEnv.act`.
* one small reader per protocol: `tags.py` (the paper's: history in one user message), `chat.py` (multi-turn
  chat), `toolcalls.py` (chat with TRL/Qwen JSON tool calls; also reads finished TRL completions), `direct.py`
  (the no-tool baseline). Rendering is `prompts.build_messages`. `TagToolEnv` is the environment of the "tags"
  tool form (its TRL tools are the paper's tags); `make_env(**settings)` / `env_factory(**settings)` pick the class.

Rows for TRL come from `arftlib.rows` (`task_to_row`, `task_from_row`, re-exported here).
"""

from arftlib.env.core import (ENV_PROTOCOLS, METRIC_KEYS, TOOL_METHODS, AgentEnv, TagToolEnv, env_factory, make_env,
                              not_a_tool, tool_functions)
from arftlib.rows import task_from_row, task_to_row

__all__ = ["AgentEnv", "ENV_PROTOCOLS", "METRIC_KEYS", "TOOL_METHODS", "TagToolEnv", "env_factory", "make_env",
           "not_a_tool", "task_from_row", "task_to_row", "tool_functions"]
