"""Layer tars: reading them safely (the parser and its compiled fast path), decompressing,
applying them to a directory, and writing a layer's changes as a tar."""
