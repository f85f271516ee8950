"""The data path: corpus sources → documents → token shards → batches."""
