"""Publishing a run: the model card, plots, the Hub push."""
