"""Evidence packs built from a run directory alone: figures (matplotlib) and PDF (reportlab)."""
