"""Training for the cats-vs-dogs classifier: `trainer fit|test|predict` (see trainer.cli)."""
