"""Batch inference: OpenAI's Files and Batches API in the gateway, the files in the deployment's bucket, and a
worker that sends each line through the gateway at a priority below online traffic."""
