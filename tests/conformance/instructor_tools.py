"""instructor's TOOLS mode against a live inferd: run by test_instructor.py with the
Python of instructor's own virtualenv (its pins exclude the shared one's openai), never
collected by pytest. Arguments: the server's URL and the model's name; prints JSON.

- an extraction: a pydantic model as a function tool, `tool_choice` naming it;
- a validation retry: the first answer is refused by a validator, so instructor asks again
  with its call and the error (an assistant `tool_calls` message and a `role: tool` result)
  in the history, and the second answer is taken.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version

import instructor
import openai
import pydantic


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=40)
    country: str = pydantic.Field(max_length=40)


seen: list[str] = []  # the names the validator was given, one per answer


class CheckedCity(City):
    @pydantic.field_validator("name")
    @classmethod
    def refused_once(cls, value: str) -> str:
        seen.append(value)
        if len(seen) == 1:
            raise ValueError("give the name of the city in its own language")
        return value


def main(url: str, model: str) -> None:
    client = instructor.from_openai(
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300),
        mode=instructor.Mode.TOOLS,
    )
    ask = [{"role": "user", "content": "Which city is the capital of France?"}]
    fields = {"model": model, "messages": ask, "temperature": 0, "max_tokens": 128}
    city, completion = client.chat.completions.create_with_completion(
        response_model=City, max_retries=0, **fields
    )
    choice = completion.choices[0]
    retried = client.chat.completions.create(response_model=CheckedCity, max_retries=2, **fields)
    json.dump(
        {
            "versions": [version("instructor"), version("openai"), version("jiter")],
            "city": city.model_dump(),
            "finish_reason": choice.finish_reason,
            "called": [c.function.name for c in choice.message.tool_calls or []],
            "retried": retried.model_dump(),
            "seen": seen,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
