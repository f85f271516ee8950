"""Export a run to a Hugging Face folder or a GGUF file, and import a Hugging Face folder as a run.

transformers and gguf are imported lazily inside the functions that need them (the `[export]` extra).
"""
