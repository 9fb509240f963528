"""Models for training and for model-driven operators.

Submodules are imported explicitly, so ``import datacopilot`` never needs Paddle:

- ``datacopilot.models.lm``: ``build_tiny_lm``, ``load_causal_lm`` (any PaddleNLP causal LM from a local
  directory) and ``causal_lm_loss`` (sum of token losses / number of target tokens);
- ``datacopilot.models.vlm``: ``TinyVLM``, ``VLMConfig``, ``build_tiny_vlm``, ``load_vlm``;
- ``datacopilot.models.tokenizer`` and ``datacopilot.models.chat_template``: the text side.
"""
