"""Architecture parameters of every method (alpha, edge gates, PC-DARTS's beta) and their maths: the weightings that
turn them into op weights (softmax, Gumbel sampling, edge normalisation), the DiNTS grid's pattern probabilities,
entropy and topology losses, and the grid's memory model."""
