"""Training (paper §3.2 recipe) and evaluation of LGA models on LViT-layout data."""
