from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StringConstraints

# Deliverability is checked by the sign-up mail a real deployment adds; the API only rejects
# strings that cannot be an address.
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, max_length=320, pattern=r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$"
    ),
    AfterValidator(str.lower),
]


class SignupRequest(BaseModel):
    email: Email = Field(examples=["ada@example.com"])
    password: str = Field(min_length=10, max_length=128, examples=["correct horse battery"])


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    plan: str
    training_consent: bool = Field(
        description="Whether utterances this account corrected may be used to retrain the model."
    )
    created_at: datetime


class AccountUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"training_consent": True}]})

    training_consent: StrictBool | None = Field(
        default=None,
        description="Allow (true) or stop (false) using this account's corrected utterances as "
        "training data; only consented corrections are exported.",
    )


class TokenPair(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str = Field(description="Single use: each refresh returns a new one.")


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=10, max_length=200)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=128)
    new_password: str = Field(min_length=10, max_length=128)


class PasswordReset(BaseModel):
    token: str = Field(
        min_length=10, max_length=300, description="From `moodreel users reset-password EMAIL`."
    )
    new_password: str = Field(min_length=10, max_length=128)
