"""The core pipeline: case contract, reading, validation, explanation and answers."""
