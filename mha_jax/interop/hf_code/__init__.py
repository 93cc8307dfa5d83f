"""The Hugging Face custom-code files an MHA export copies beside its weights
(torch + transformers only: a PyTorch user loads them without JAX)."""
