"""`llmlab audit`: how torch.compile-ready a user's own PyTorch model is, line by line."""

from llmlab.audit.pipeline import AuditReport, audit
from llmlab.audit.report import render, to_json
from llmlab.audit.target import AuditInputError

__all__ = ["AuditInputError", "AuditReport", "audit", "render", "to_json"]
