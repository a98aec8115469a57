"""What the prompt stages share: one prompt file, its request and its provenance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ..jobs import Outcome, Stage, UnitSpec
from ..llm import ChatRequest, Messages
from ..prompting import Prompt, get_prompt


class PromptStage(Stage):
    """A stage with one prompt: a unit's messages rendered from inputs read in bulk."""

    prompt_name: ClassVar[str]
    #: whether the answer is taken whole as text (an answer) rather than read as JSON
    free_text: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: what `prepare` read for each unit not yet asked, dropped once its request is built
        self.inputs: dict[str, Any] = {}

    @property
    def prompt(self) -> Prompt:
        return get_prompt(self.prompt_name)

    def prepare(self, units: Sequence[UnitSpec]) -> None:
        self.inputs.update(self.read_inputs(units))

    def read_inputs(self, units: Sequence[UnitSpec]) -> dict[str, Any]:
        """Each unit's prompt variables (or an Outcome saying why it cannot be asked), read
        from the store in a few queries for all of them. Runs off the event loop."""
        return {}

    def request(self, unit: UnitSpec) -> ChatRequest | Outcome:
        variables = self.inputs.pop(unit.id, None)
        if variables is None:  # asked without its inputs read first: read them alone
            variables = self.read_inputs([unit]).get(unit.id, {})
        if isinstance(variables, Outcome):
            return variables
        return self.chat_request(self.prompt.render(**variables))

    def chat_request(self, messages: Messages) -> ChatRequest:
        model = self.prompt.response_model
        if self.free_text:
            return self.llm.text_request(messages, model, self.params)
        return self.llm.request(messages, model, self.params)

    def stamp(self, unit: UnitSpec) -> dict[str, Any]:
        return self.provenance(unit, self.prompt.name, self.prompt.version)
