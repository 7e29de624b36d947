"""The retry settings in the config: how a failed message is redelivered, then dead-lettered."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sampan.bus.retry import RetryPolicy
from sampan.units import Duration


class RetryConfig(BaseModel):
    """Redelivery of messages whose handler failed, before they are dead-lettered."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    max_attempts: int = Field(
        5, ge=1, description="Deliveries before a message is dead-lettered (1 = no retry)."
    )
    initial_backoff: Duration = Field(0.2, description="Delay before the first redelivery.")
    max_backoff: Duration = Field(30.0, description="Upper bound of the delay between deliveries.")
    multiplier: float = Field(
        2.0, ge=1, description="Factor applied to the delay after each failed delivery."
    )
    jitter: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Fraction of each delay that is randomised, so retries of a burst of"
        " failures do not arrive together (0 = none, 1 = full jitter).",
    )

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            initial_backoff=self.initial_backoff,
            max_backoff=self.max_backoff,
            multiplier=self.multiplier,
            jitter=self.jitter,
        )
