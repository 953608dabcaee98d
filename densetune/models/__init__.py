"""Models: bi-encoders and cross-encoders over Hugging Face backbones."""
