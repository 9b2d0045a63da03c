"""Training data: the real-structure corpus with held-out splits (and simulated datasets)."""

from cryostack.data.corpus import CORPUS_VERSION, ChainRecord, Corpus, TestSplitAccessError, export_corpus

__all__ = ["CORPUS_VERSION", "ChainRecord", "Corpus", "TestSplitAccessError", "export_corpus"]
