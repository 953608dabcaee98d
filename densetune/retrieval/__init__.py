"""Retrieval: encode, search, evaluate, mine."""
