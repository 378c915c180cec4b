"""Training data sources (MELD, speech corpora) and the feature cache."""
