"""Files in and out: frame sources (movies, sequences, EXR), points and tracks files, exporters, previews."""
