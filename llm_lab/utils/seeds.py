"""The one range of seeds the lab accepts: integers from 0 to 2**63 - 1.

``torch.manual_seed`` takes 64 bits and raises ``Overflow when unpacking long long`` past them, which names no
flag; derived seeds (a rank, a turn, a step added) need some room above the one given. Every ``--seed`` flag and
every ``seed`` config key is checked here, so the message names the flag or the key.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_SEED", "check_seed"]

#: The largest seed accepted: 63 bits, so a seed plus a small offset (a process rank, a chat turn) still fits the
#: 64 bits a torch generator holds.
MAX_SEED = 2**63 - 1


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` if it is an integer from 0 to :data:`MAX_SEED`, else a ``ValueError`` naming ``name``.

    Args:
        value: the seed given.
        name: the flag or key it came from (``"--seed"``, ``"train.seed"``), named in the message.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to 2**63 - 1 ({MAX_SEED}), got {value!r}")
    return value
