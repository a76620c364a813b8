"""stepdpo: step-wise preference data and Step-DPO training for math reasoning."""
__version__ = "0.1.0"
