"""Stage 4, explanations: relevance maps (saliency, LRP) and where the relevance lies, the
tSNE of the hidden layer, and their figures."""
