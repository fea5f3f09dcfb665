"""Export a trained llmlab model to other ecosystems: Hugging Face `transformers` (Llama, Mistral
or Mixtral layout), in memory (`to_transformers`) or as a folder (`export_run`)."""

from llmlab.export.folder import export_run
from llmlab.export.hf import ExportError, to_transformers

__all__ = ["ExportError", "export_run", "to_transformers"]
