"""sde-search: search the sample design of LLM fine-tuning data (Guo et al. 2024, arXiv 2404.13033)."""

__version__ = "0.1.0"
