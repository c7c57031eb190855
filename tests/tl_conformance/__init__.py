"""TransformerLens conformance: our model against what TransformerLens's own tests pin, one file per area as TL
organises its tests (hooks, ActivationCache, forward/loss, stop/start_at_layer, padding, prepend_bos, tokenization,
pos_slice, attention masks, hook names, hook_tokens, generate, patching, analysis methods)."""
