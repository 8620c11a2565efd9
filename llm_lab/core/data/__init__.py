"""core/data: token-id datasets, corpus preparation (``prepare``) and corpus download (``download``).

The dataset classes are loaded on first use (PEP 562 ``__getattr__``), so importing ``core.data.download`` (a
standard-library-only module, used by ``llm-lab data download`` and ``llm-lab --help``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_lab.core.data.datasets import CharDataset, LanguageModelingDataset

__all__ = ["CharDataset", "LanguageModelingDataset"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from llm_lab.core.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
