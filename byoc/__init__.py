"""byoc: bring-your-own-cloud private LLM inference."""

__version__ = "0.1.0"
