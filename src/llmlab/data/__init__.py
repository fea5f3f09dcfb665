"""Data: tokenizers, corpora, `prepare` (tokenize once into verified token files) and the loader.

Modules: tokenizers (gpt2, byte, trained BPE) · sources, wikitext, pydocs (documents per split) ·
encode (parallel tokenization) · tokenfile (the on-disk format) · meta (meta.json) · prepare ·
loader (memmapped, deterministic, resumable batches). Nothing is imported here, so that
`import llmlab.data.prepare` stays free of torch (only the loader needs it).
"""
