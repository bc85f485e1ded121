"""Models: pretrained checkpoints and heads, layer groups, hftl's own model classes (pooled text, fusion)."""
