"""r1v2: the Skywork R1V2 training recipe for multimodal reasoning models."""

__version__ = "0.1.0"
