"""The host: mounts, which filesystem a path is on, file locks and process identities,
exact tree copies and safe removal. Everything above uses these; they use nothing above."""
