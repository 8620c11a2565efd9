"""core/data: token-id datasets, corpus preparation (``prepare``) and corpus download (``download``)."""

from llm_lab.core.data.datasets import CharDataset, LanguageModelingDataset

__all__ = ["CharDataset", "LanguageModelingDataset"]
