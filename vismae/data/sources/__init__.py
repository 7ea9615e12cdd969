"""One reader per dataset; each turns a dataset folder into a manifest (metadata only)."""
