"""LGA's own modules (cross-attention, FFM, text branch) and the model that composes them with SAM."""
