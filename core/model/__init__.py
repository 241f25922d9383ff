"""The model: the transformer over histories, its vocabulary, batching, objective, task
interface, and saving/loading a backbone."""
