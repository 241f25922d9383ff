"""regiontune: one frozen recommender backbone, one small adapter per region."""

__version__ = "0.1.0"
