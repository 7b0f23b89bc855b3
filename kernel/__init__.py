"""kernel: a notebook-free PyTorch fine-tuning bundle for Kaggle and Colab."""

__version__ = "0.1.0"
__all__ = ["__version__"]
