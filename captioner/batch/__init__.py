"""Batch captioning of folders and archives: the resumable output log, shards, and Ray Data."""
