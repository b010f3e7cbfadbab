"""The environment variables the commands read, so a compose file configures them all."""

from __future__ import annotations

# The shared secret that signs control envelopes (DESIGN.md section 9) is the catalogue's.
from bus.messages import SECRET_ENV

__all__ = ["BUS_URL_ENV", "SECRET_ENV"]

# The bus every command uses when --bus is not given (`trainer run` then runs only the trainer).
BUS_URL_ENV = "TRAINER_BUS_URL"
