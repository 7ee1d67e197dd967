"""What the frozen artifact runs: open a bundle, embed, serve.

Imports nothing from the builder (only encoderfile.errors, onnxruntime, tokenizers, numpy), so the
frozen binary stays small and its cold start short. Submodules are imported on demand.
"""
