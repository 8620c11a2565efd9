"""Library core: model, tokenization, data, train, decode, package (one concern each)."""
