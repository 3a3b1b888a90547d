"""The base of every configuration section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A part of the configuration file; a key it does not know is an error."""

    # A misspelt key fails at start instead of silently leaving its default in place.
    model_config = ConfigDict(extra="forbid")
