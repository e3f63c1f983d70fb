"""Architecture-parameter maths of the DiNTS grid (pattern probabilities, entropy and topology losses)."""
